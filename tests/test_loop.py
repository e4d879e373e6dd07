"""The one loop: accumulation invariance, exact resume, NaN stop with a good checkpoint, data order."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import TrainConfig
from rlhfkit.trainers.loop import DataOrder, TrainingDiverged, latest_checkpoint, run_loop
from tests.toy import ToyLM, ToyObjective, _rows


def _cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / name), max_steps=4, batch_size=8, lr=1e-2, progress=False, scheduler="linear")
    base.update(kw)
    return TrainConfig(**base)


def _train(tmp_path, name: str, **kw) -> ToyLM:
    model = ToyLM()
    cfg = _cfg(tmp_path, name, **kw)
    run_loop(model, ToyObjective(), _rows(), [], cfg, tmp_path / name)
    return model


def _same(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> bool:
    return all(torch.allclose(p.cpu(), q.cpu(), atol=atol) for p, q in zip(a.parameters(), b.parameters()))


def test_accumulation_is_invariant_1x8_equals_8x1(tmp_path):
    one = _train(tmp_path, "a", micro_batch_size=8)
    eight = _train(tmp_path, "b", micro_batch_size=1)
    four = _train(tmp_path, "c", micro_batch_size=2)
    assert _same(one, eight) and _same(one, four)
    assert not _same(one, ToyLM())  # parameters really moved


def test_global_normalizer_matters(tmp_path):
    """A per-micro-batch mean (the common bug) would differ from the global token mean with ragged lengths."""
    model, obj = ToyLM(), ToyObjective()
    rows = _rows()[:8]
    full = obj.collate(rows)
    loss_full, _ = obj.loss(model, full)
    per_micro = sum(obj.loss(model, obj.collate([r]))[0] / obj.count(obj.collate([r])) for r in rows) / 8
    assert not torch.allclose(loss_full / obj.count(full), per_micro)


def test_resume_continues_exactly(tmp_path):
    reference = _train(tmp_path, "full", save_every=2)
    model = ToyLM()
    cfg = _cfg(tmp_path, "cut", save_every=2)

    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_loop(model, ToyObjective(), _rows(), [], cfg, tmp_path / "cut", on_step=crash)
    assert latest_checkpoint(tmp_path / "cut").name == "step-000002"
    resumed = ToyLM()  # fresh weights: everything must come from the checkpoint
    run_loop(resumed, ToyObjective(), _rows(), [], _cfg(tmp_path, "cut", save_every=2, resume=True), tmp_path / "cut")
    assert _same(resumed, reference)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3 ran twice (before the crash, after resuming) and is logged once
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):  # no silent mixing of two runs
        run_loop(ToyLM(), ToyObjective(), _rows(), [], _cfg(tmp_path, "cut"), tmp_path / "cut")
    with pytest.raises(ValueError, match=r"cannot resume, the run changed \(batch_size: 8 -> 4"):
        run_loop(
            ToyLM(), ToyObjective(), _rows(), [], _cfg(tmp_path, "cut", batch_size=4, resume=True), tmp_path / "cut"
        )


def test_nan_stops_with_good_checkpoint(tmp_path):
    model = ToyLM()
    cfg = _cfg(tmp_path, "nan", micro_batch_size=4)
    obj = ToyObjective(nan_at_call=5)  # 2 micro-batches per step: the 5th call is the first of step index 2
    with pytest.raises(TrainingDiverged) as err:
        run_loop(model, obj, _rows(), [], cfg, tmp_path / "nan")
    msg = str(err.value)
    assert msg.startswith("step 2: loss is nan on training rows [")
    saved = latest_checkpoint(tmp_path / "nan")
    assert saved is not None and str(saved) in msg
    weights = load_file(str(saved / "trainable.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    # the saved weights are the ones after 2 good steps: a clean 2-step run reproduces them
    two = ToyLM()

    def stop_after_two(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_loop(
            two,
            ToyObjective(),
            _rows(),
            [],
            _cfg(tmp_path, "two", micro_batch_size=4),
            tmp_path / "two",
            on_step=stop_after_two,
        )
    for name, p in two.named_parameters():
        assert torch.allclose(weights[name], p.detach().cpu())


def test_data_order_keeps_groups_together_and_in_order():
    groups = ["a", "b", "a", "c", "b", "a", "d", "d"]  # rows 0, 2, 5 are one group; 1, 4 another; ...
    order = DataOrder(n_rows=8, global_batch=4, seed=3, groups=groups)
    for epoch in range(3):
        rows = order.rows_for_step(2 * epoch) + order.rows_for_step(2 * epoch + 1)
        assert sorted(rows) == list(range(8))  # a permutation of all rows per epoch
        runs = [groups[i] for i in rows]
        assert [k for j, k in enumerate(runs) if j == 0 or runs[j - 1] != k] == list(dict.fromkeys(runs))  # contiguous
        for key in "abcd":
            members = [i for i in rows if groups[i] == key]
            assert members == sorted(members)  # in their original order
    firsts = {tuple(DataOrder(8, 4, s, groups).rows_for_step(0)) for s in range(6)}
    assert len(firsts) > 1  # the groups themselves are shuffled
    with pytest.raises(ValueError, match="3 keys for 8 rows"):
        DataOrder(8, 4, 0, groups=["a", "b", "c"])


def test_data_order_is_a_permutation_per_epoch():
    order = DataOrder(n_rows=10, global_batch=3, seed=1)
    assert order.steps_per_epoch == 3
    epoch0 = sum((order.rows_for_step(s) for s in range(3)), [])
    assert len(set(epoch0)) == 9
    assert order.rows_for_step(3) != order.rows_for_step(0) or order.rows_for_step(4) != order.rows_for_step(1)
    assert DataOrder(10, 3, 1).rows_for_step(4) == order.rows_for_step(4)  # deterministic: resume needs this
    with pytest.raises(ValueError, match="only 2 training rows"):
        DataOrder(2, 3, 0)


def test_a_checkpoint_that_cannot_be_written_says_why_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    from rlhfkit.trainers import checkpoint

    _train(tmp_path, "disk", save_every=2, max_steps=2)
    good = latest_checkpoint(tmp_path / "disk")
    before = {f.name: f.read_bytes() for f in good.iterdir()}
    real = torch.save

    def full_disk(obj, f, *a, **k):  # what torch.save raises when the disk fills mid-write
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 113260096 vs 113259984")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        run_loop(
            ToyLM(), ToyObjective(), _rows(), [], _cfg(tmp_path, "disk", save_every=2, resume=True), tmp_path / "disk"
        )
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'disk' / 'checkpoints'}") and "could not write the checkpoint" in msg
    assert "unexpected pos" in msg and "GiB free on its disk; earlier checkpoints are kept" in msg and "\n" not in msg
    assert latest_checkpoint(tmp_path / "disk") == good  # the last good checkpoint is intact, no half-written one
    assert {f.name: f.read_bytes() for f in good.iterdir()} == before
    assert not list((tmp_path / "disk" / "checkpoints").glob("*.tmp"))

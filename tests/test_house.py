"""The package's layout rules (DESIGN.md "The house"), checked on the source: imports point down, nothing imports the
CLI, trainers do not import each other and are not imported outside the CLI and the pipeline, each trainer fits in 400
lines, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rlhfkit"
# what trainers share; not trainers themselves
INFRA = {"loop", "step", "common", "checkpoint", "rl_common", "distributed", "zero", "sharding"}  # not trainers


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.parts[-1] == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every rlhfkit module a file imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in MODULES:
                n = n.rpartition(".")[0]
            if n.startswith("rlhfkit"):
                out.add(n)
    return out


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in GRAPH[m]:
            if m.startswith(n + "."):  # a module importing its own package's __init__ is not a cycle
                continue
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [m])


def test_nothing_imports_the_cli():
    assert [m for m, deps in GRAPH.items() if "rlhfkit.cli" in deps] == []


def test_trainers_import_no_other_trainer_and_only_the_top_imports_them():
    trainers = {m for m in MODULES if m.startswith("rlhfkit.trainers.") and m.split(".")[-1] not in INFRA}
    for m in trainers:
        assert not (GRAPH[m] & trainers), f"{m} imports {GRAPH[m] & trainers}"
    allowed = ("rlhfkit.cli", "rlhfkit.commands", "rlhfkit.pipeline", "rlhfkit.trainers")
    for m, deps in GRAPH.items():
        if any(d.startswith("rlhfkit.trainers") for d in deps):
            assert m.startswith(allowed), f"{m} imports a trainer module"


@pytest.mark.parametrize("path", sorted(p.name for p in (PKG / "trainers").glob("*.py")))
def test_every_trainer_file_reads_in_at_most_400_lines(path):
    assert len((PKG / "trainers" / path).read_text().splitlines()) <= 400


def test_lower_layers_do_not_import_upper_ones():
    lower = ("rlhfkit.ops", "rlhfkit.losses", "rlhfkit.advantages", "rlhfkit.kl", "rlhfkit.data", "rlhfkit.config")
    upper = (
        "rlhfkit.trainers",
        "rlhfkit.pipeline",
        "rlhfkit.cli",
        "rlhfkit.eval",
        "rlhfkit.feedback",
        "rlhfkit.rollout",
    )
    for m, deps in GRAPH.items():
        if m.startswith(lower):
            assert not {d for d in deps if d.startswith(upper)}, m
    for m, deps in GRAPH.items():  # rollout and eval: no back-and-forth with each other or with the pipeline
        if m.startswith("rlhfkit.rollout"):
            assert not {d for d in deps if d.startswith(("rlhfkit.eval", "rlhfkit.pipeline", "rlhfkit.trainers"))}, m
        if m.startswith("rlhfkit.eval"):
            assert not {d for d in deps if d.startswith(("rlhfkit.pipeline", "rlhfkit.trainers", "rlhfkit.rollout"))}, m


def test_the_sample_data_generator_is_not_installed():
    assert not (PKG / "tasks" / "build_sample_data.py").exists()
    assert (PKG.parent / "tools" / "build_sample_data.py").exists()


def test_one_registry_per_kind_of_thing():
    """Names listed once: the config's Literal choices are the registries' keys."""
    import typing

    from rlhfkit import config
    from rlhfkit.commands import COMMANDS, OPTIMIZERS
    from rlhfkit.losses import PREFERENCE_LOSSES
    from rlhfkit.rewards import BUILDERS
    from rlhfkit.trainers.online import ADVANTAGES

    assert set(typing.get_args(config.PreferenceLossName)) == set(PREFERENCE_LOSSES)
    assert set(typing.get_args(config.RewardKind)) == set(BUILDERS)
    online = {c.config().algo.name for c in COMMANDS.values() if c.online}
    assert online == set(typing.get_args(config.AlgoName))
    assert set(ADVANTAGES) | {"online-dpo"} == online
    assert all(c.optimizer for c in OPTIMIZERS.values()) and {"ppo", "dpo"} <= set(OPTIMIZERS)

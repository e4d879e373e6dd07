"""Step time, generated tokens/s and peak memory of rlhfkit's GRPO and PPO on the peer GRPO benchmark's shape.

    python benchmarks/rl_step.py grpo|ppo [--backend hf|hf-static] [--steps N] [--micro M] [--gc]

Same model and data as the peer script's `grpo` benchmark (random-init Llama: hidden 1024, 24 layers, vocab 32000, bf16;
8 prompts of 128 random-word tokens x 8 generations of 256 new tokens, EOS left to chance: under 1% of rows stop early;
a reward = the completion's length in characters; lr 1e-6; KL coefficient 0.04 to a frozen reference), so both run side
by side in one job. PPO uses the same 64 sequences (64 prompts x 1 sample), a value head and one epoch. Prints one JSON
line; steady state = steps after the first 2 (the first one compiles the decoding step with --backend hf-static).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.config import GRPOConfig, PPOConfig, load_config  # noqa: E402
from rlhfkit.data import write_jsonl  # noqa: E402
from rlhfkit.tracking import read_metrics  # noqa: E402
from rlhfkit.trainers.online import train_rl  # noqa: E402

HIDDEN = int(os.environ.get("HIDDEN", 1024))
LAYERS = int(os.environ.get("LAYERS", 24))
VOCAB, G, NP, P, C = 32000, 8, 8, 128, 256


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r)) for r in responses]


def make_model_dir(path: Path) -> int:
    """The peer's model and word-level tokenizer (same code path: random init with seed 0, saved in bf16)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 11 // 4,
        num_hidden_layers=LAYERS,
        num_attention_heads=HIDDEN // 64,
        num_key_value_heads=HIDDEN // 64,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("algo", choices=["grpo", "ppo"])
    ap.add_argument("--backend", default="hf-static", choices=["hf", "hf-static"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--micro", type=int, default=16, help="sequences per forward in the update")
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp())
    n_params = make_model_dir(root / "model")
    g = torch.Generator().manual_seed(2)
    n_prompts = NP if args.algo == "grpo" else G * NP
    rows = [
        {"prompt": " ".join(f"w{int(x)}" for x in torch.randint(3, VOCAB, (P,), generator=g))}
        for _ in range(n_prompts * (args.steps + 1))
    ]
    write_jsonl(root / "prompts.jsonl", rows)
    cls = GRPOConfig if args.algo == "grpo" else PPOConfig
    overrides = [
        f"model.name_or_path={root / 'model'}",
        "model.dtype=bfloat16" if torch.cuda.is_available() else "model.dtype=float32",
        f"model.gradient_checkpointing={str(args.gc).lower()}",
        f"data.train={root / 'prompts.jsonl'}",
        "data.eval_fraction=0",
        "data.max_length=1024",
        "data.max_prompt_length=256",
        "data.curation.dedupe=false",
        f"train.output_dir={root / 'out'}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={n_prompts}",
        f"train.micro_batch_size={args.micro}",
        "train.lr=1e-6",
        "train.progress=false",
        f"sampling.max_new_tokens={C}",
        # no min_new_tokens (online RL refuses it: the training log-probs cannot see a suppressed EOS); a random-init
        # model over 32,000 tokens draws EOS within 256 tokens in under 1% of rows, so rows are all but always full
        f"sampling.batch_size={G * NP}",
        f"sampling.backend={args.backend}",
        "kl.coef=0.04",
        f"reward.sources=[{{kind: callable, path: '{Path(__file__).resolve()}:length_reward'}}]",
        "eval_samples=0",
    ]
    if args.algo == "grpo":
        overrides += [f"algo.num_samples={G}"]
    else:
        overrides += ["algo.epochs=1", "algo.critic=head"]
    cfg = load_config(cls, None, overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(io.StringIO()):
        train_rl(cfg)
    steps = [r for r in read_metrics(root / "out" / "metrics.jsonl") if "train/time/generate" in r]
    steady = steps[2:] or steps
    parts = {
        k: sum(r[f"train/time/{k}"] for r in steady) / len(steady) for k in ("generate", "score", "forward", "train")
    }
    step_s = sum(parts.values())
    print(
        json.dumps(
            {
                "bench": f"rlhfkit_{args.algo}",
                "backend": args.backend,
                "micro": args.micro,
                "gradient_checkpointing": args.gc,
                "params_m": round(n_params / 1e6),
                "samples": G * NP,
                "prompt": P,
                "completion": C,
                "step_s": round(step_s, 3),
                "split_s": {k: round(v, 3) for k, v in parts.items()},
                "gen_tokens_per_s": round(G * NP * C / step_s),
                "first_step_s": round(sum(steps[0][f"train/time/{k}"] for k in parts), 2),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
                "mean_length": steady[-1]["train/response_length"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

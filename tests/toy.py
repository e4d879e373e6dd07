"""A toy language model and objective for testing the training loop without transformers."""

from __future__ import annotations

import torch


class ToyLM(torch.nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(ids)))


class ToyObjective:
    """Token-mean next-token NLL over sequences of different lengths: the normalizer is a token count."""

    def __init__(self, nan_at_call: int | None = None):
        self.calls = 0
        self.nan_at_call = nan_at_call

    def collate(self, rows):
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}

    def count(self, batch):
        return float(batch["attention_mask"][:, 1:].sum())

    def loss(self, model, batch):
        self.calls += 1
        logits = model(batch["input_ids"][:, :-1])
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
        total = (nll * batch["attention_mask"][:, 1:]).sum()
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            total = total * float("nan")
        return total, {"nll": float(total.detach())}

    def evaluate(self, model, rows):
        return {"rows": float(len(rows))}


def _rows(n: int = 32, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(1, 11, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)
    ]


def letter_reward(prompts: list[str], responses: list[str], letter: str = "e") -> list[float]:
    """Share of a response's characters that are `letter` (0 for an empty response): a reward a tiny random policy
    can learn to raise in a few dozen steps."""
    return [r.count(letter) / max(len(r), 1) for r in responses]


def letter_steps(prompts: list[str], responses: list[str], letter: str = "e") -> list[list[tuple[int, float]]]:
    """A process reward for the toy task: every word is a step, rewarded with the share of `letter` in it at the
    word's end (a callable reward source returning (end, reward) steps)."""
    out = []
    for r in responses:
        steps, pos = [], 0
        for word in r.split():
            start = r.index(word, pos)
            pos = start + len(word)
            steps.append((pos, word.count(letter) / len(word)))
        out.append(steps)
    return out

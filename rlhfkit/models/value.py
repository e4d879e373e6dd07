"""The trainable unit of online RL: a policy plus an optional critic, in ONE module (one optimizer, one checkpoint)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlhfkit.models.head import next_token_stats


def _score_head(model: nn.Module) -> nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"{type(model).__name__} has no scalar head (score / classifier): cannot use it as a critic")


class PolicyWithValue(nn.Module):
    """critic="head": a linear value head on the policy's last hidden state (shares the trunk, cheapest);
    "separate": its own network, e.g. initialized from the reward model (InstructGPT); "none": policy only.

    `forward` returns log-probs, entropy and values of the response tokens only: position t predicts token t+1, so the
    response tokens of a left-padded prompt + right-padded response row are predicted by the R positions before the
    last (the head is not even applied to the prompt). `fused` and `padding_free` are `models.head.next_token_stats`'s.
    """

    def __init__(
        self,
        policy: nn.Module,
        critic: str = "none",
        critic_model: nn.Module | None = None,
        fused: bool = True,
        padding_free: bool = False,
    ):
        super().__init__()
        self.fused, self.padding_free = fused, padding_free  # see models.head.next_token_stats
        if critic not in ("head", "separate", "none"):
            raise ValueError(f"critic must be head, separate or none, got {critic!r}")
        if (critic == "separate") != (critic_model is not None):
            raise ValueError("critic='separate' needs critic_model (and only it does)")
        self.policy, self.critic_kind = policy, critic
        if critic == "head":
            p = next(policy.parameters())
            hidden = policy.config.get_text_config().hidden_size
            self.value_head = nn.Linear(hidden, 1, device=p.device, dtype=p.dtype)
            # zero init: every state starts at value 0, so the first advantages are the (whitened) returns themselves
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        elif critic == "separate":
            _score_head(critic_model)  # fail now, not at the first step
            self.critic = critic_model

    @property
    def has_critic(self) -> bool:
        return self.critic_kind != "none"

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        response_ids: Tensor,
        temperature: float = 1.0,
        values: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(log-probs (B, R), entropy (B, R), values (B, R) float32 or None) of the R response tokens (the last R
        columns of input_ids), under softmax(logits / temperature)."""
        want_hidden = values and self.critic_kind == "head"
        r = response_ids.shape[1]
        stats = next_token_stats(
            self.policy,
            input_ids,
            attention_mask,
            r,
            labels=torch.cat([input_ids[:, :-r], response_ids], 1),
            position_ids=position_ids,
            temperature=temperature,
            entropy=True,
            hidden=want_hidden,
            fused=self.fused,
            padding_free=self.padding_free,
        )
        v = None
        if want_hidden:
            v = self.value_head(stats.hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        elif values and self.critic_kind == "separate":
            # the critic runs its own forward (a sharded critic gathers its weights there) and returns its head's
            # output at every position instead of the pooled last-token score: hooks swap the output before any other
            # hook sees it (FSDP's post-forward then prepares the backward through it)
            head_out: list[Tensor] = []
            handles = [
                _score_head(self.critic).register_forward_hook(lambda _m, _i, out: head_out.append(out)),
                self.critic.register_forward_hook(lambda _m, _i, _out: head_out[-1], prepend=True),
            ]
            try:
                per_position = self.critic(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
                )
            finally:
                for handle in handles:
                    handle.remove()
            v = per_position[:, -(r + 1) : -1].squeeze(-1).float()
        assert stats.entropy is not None
        return stats.logprobs, stats.entropy, v

    def critic_parameters(self) -> list[nn.Parameter]:
        if self.critic_kind == "head":
            return list(self.value_head.parameters())
        if self.critic_kind == "separate":
            return list(self.critic.parameters())
        return []

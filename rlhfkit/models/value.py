"""The trainable unit of online RL: a policy plus an optional critic, in ONE module (one optimizer, one checkpoint)."""

from __future__ import annotations

from torch import Tensor, nn


def _score_head(model: nn.Module) -> nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"{type(model).__name__} has no scalar head (score / classifier): cannot use it as a critic")


class PolicyWithValue(nn.Module):
    """critic="head": a linear value head on the policy's last hidden state (shares the trunk, cheapest);
    "separate": its own network, e.g. initialized from the reward model (InstructGPT); "none": policy only.

    `forward` returns the logits and values for the last `n_response` tokens only: the logits of position t predict
    token t+1, so the response tokens of a left-padded prompt + right-padded response row are predicted by the n_response
    positions before the last (the head is not even applied to the prompt, which saves a (B, P, V) logits tensor).
    """

    def __init__(self, policy: nn.Module, critic: str = "none", critic_model: nn.Module | None = None):
        super().__init__()
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
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, n_response: int, values: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """(logits (B, R, V), values (B, R) float32 or None) for the R = n_response response tokens."""
        want_hidden = values and self.critic_kind == "head"
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=n_response + 1,
            output_hidden_states=want_hidden,
            use_cache=False,
        )
        logits = out.logits[:, -(n_response + 1) : -1]
        v = None
        if values and self.critic_kind == "head":
            h = out.hidden_states[-1][:, -(n_response + 1) : -1]
            v = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()
        elif values and self.critic_kind == "separate":
            h = self.critic.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state[:, -(n_response + 1) : -1]
            v = _score_head(self.critic)(h).squeeze(-1).float()
        return logits, v

    def critic_parameters(self) -> list[nn.Parameter]:
        if self.critic_kind == "head":
            return list(self.value_head.parameters())
        if self.critic_kind == "separate":
            return list(self.critic.parameters())
        return []

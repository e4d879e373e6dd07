"""Pure loss functions (torch only, scalar arguments). Tables map config names to functions; trainers look them up."""

from __future__ import annotations

from collections.abc import Callable

from rlhfkit.losses.aggregation import AGGREGATION_MODES, aggregate, aggregate_sum_and_count
from rlhfkit.losses.preference import (
    REFERENCE_FREE,
    dpo_loss,
    dpo_ties_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    uniform_dpo,
    uniform_hinge,
    uniform_ipo,
    uniform_orpo,
    uniform_robust,
    uniform_simpo,
)
from rlhfkit.losses.reward import (
    TIE_MODELS,
    bradley_terry_loss,
    process_reward_loss,
    reward_loss,
    tie_log_probs,
    tie_loss,
    win_probability_given_no_tie,
)
from rlhfkit.losses.sft import sft_loss

# Paired preference losses, one calling convention:
#   fn(pi_chosen, pi_rejected, ref_chosen, ref_rejected, *, beta, label_smoothing=0.0, gamma=0.0,
#      chosen_len=None, rejected_len=None, nll_chosen=None, lam=0.1) -> (losses (B,), chosen_rewards, rejected_rewards)
# pi_* / ref_* are SUMMED response log-probs (B,); names in REFERENCE_FREE ignore ref_* (may be None) and need lengths.
PREFERENCE_LOSSES: dict[str, Callable[..., tuple]] = {
    "dpo": uniform_dpo,
    "ipo": uniform_ipo,
    "robust": uniform_robust,
    "hinge": uniform_hinge,
    "simpo": uniform_simpo,
    "orpo": uniform_orpo,
}

__all__ = [
    "AGGREGATION_MODES",
    "PREFERENCE_LOSSES",
    "REFERENCE_FREE",
    "TIE_MODELS",
    "aggregate",
    "aggregate_sum_and_count",
    "bradley_terry_loss",
    "dpo_loss",
    "dpo_ties_loss",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "orpo_loss",
    "process_reward_loss",
    "reward_loss",
    "robust_dpo_loss",
    "sft_loss",
    "simpo_loss",
    "tie_log_probs",
    "tie_loss",
    "win_probability_given_no_tie",
]

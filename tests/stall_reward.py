"""A reward for test_fsdp_online's hang test: on rank 1 its second call (the second rollout step) stalls far longer
than train.collective_timeout, as a hung reward server would."""

from __future__ import annotations

import os
import time

_calls = 0


def stall_on_rank_1(prompts: list[str], responses: list[str], seconds: float = 20.0) -> list[float]:
    global _calls
    _calls += 1
    if os.environ.get("RANK") == "1" and _calls == 2:
        time.sleep(seconds)
    return [float(len(r)) for r in responses]

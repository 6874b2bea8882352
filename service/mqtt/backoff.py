from __future__ import annotations

import random


def full_jitter(attempt: int, first: float, cap: float) -> float:
    """Delay before retry `attempt` (0-based): uniform in [0, min(cap, first * 2**attempt)].

    Full jitter ("Exponential Backoff And Jitter", AWS architecture blog) spreads a fleet of
    clients that lost the same broker instead of having them return in lock-step.
    """
    ceiling = min(cap, first * (2 ** min(attempt, 32)))
    return random.uniform(first / 2 if attempt == 0 else 0.0, ceiling)

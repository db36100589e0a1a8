"""Waits between attempts at something briefly unavailable (a broker, a store, Redis): doubling
from a first wait up to a cap, so a short hiccup costs a fraction of a second and a long outage
is polled every few seconds without hammering the thing that is down.

The caller keeps the loop (what is retried, for how long, what is logged); this keeps only the
schedule, so every retry loop in the worker and the stores waits the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CAP_S = 10.0  # a store back after an outage is noticed within this


@dataclass
class Backoff:
    first: float = 0.2
    cap: float = CAP_S
    delay: float = field(init=False)  # the wait the next `wait()` returns

    def __post_init__(self) -> None:
        self.delay = self.first

    @property
    def fresh(self) -> bool:
        """No wait taken since the start or the last `reset()`: the first failure of a run."""
        return self.delay == self.first

    def wait(self) -> float:
        """The wait before the next attempt (the caller sleeps it); the one after is doubled."""
        d = self.delay
        self.delay = min(d * 2, self.cap)
        return d

    def reset(self) -> None:
        """After a success: the next failure starts from the first wait again."""
        self.delay = self.first

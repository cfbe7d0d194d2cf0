"""Delays between attempts to reach a server that went away: exponential, capped, jittered."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential delays with jitter, for reconnecting without hammering."""

    initial: float = 0.5
    # The longest a worker stays idle after its broker or database is back. One connection
    # attempt or probe query per worker every few seconds costs the server nothing; a 30 s
    # ceiling left workers idle for up to half a minute after a broker restart.
    maximum: float = 5.0
    factor: float = 2.0
    _current: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._current = (
            self.initial if self._current == 0 else min(self.maximum, self._current * self.factor)
        )
        return self._current * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrets

    def reset(self) -> None:
        self._current = 0.0

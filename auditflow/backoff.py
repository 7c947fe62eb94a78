"""The one backoff of every retry loop (the relay, the feed, the CLI's watch): capped
exponential delays with jitter, so that many clients that failed together do not retry in
step. Each delay is drawn from [delay / 2, delay], delay = initial * factor^attempt, capped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    attempts: int = field(default=0, init=False)

    def next(self) -> float:
        """The delay before the next attempt (counts the attempt)."""
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        """After a success: the next failure starts again from `initial`."""
        self.attempts = 0

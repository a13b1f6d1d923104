"""A token bucket rate limiter: requests spend tokens that refill at a steady rate."""

import time
from dataclasses import dataclass, field

DEFAULT_RATE = 5.0


@dataclass
class TokenBucket:
    """Holds up to `capacity` tokens; `rate` tokens are added every second."""

    capacity: float
    rate: float = DEFAULT_RATE
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def refill(self, now: float) -> None:
        elapsed = now - self.updated
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now

    def take(self, amount: float = 1.0) -> bool:
        self.refill(time.monotonic())
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


# Waiting instead of refusing: sleep until enough tokens have accumulated.
def wait_for(bucket: TokenBucket, amount: float = 1.0) -> float:
    """Block until `amount` tokens are available; return the seconds waited."""
    waited = 0.0
    while not bucket.take(amount):
        missing = amount - bucket.tokens
        pause = missing / bucket.rate
        time.sleep(pause)
        waited += pause
    return waited


def burst_size(bucket: TokenBucket, seconds: float) -> float:
    """How many requests can pass in `seconds` starting from a full bucket."""
    return bucket.capacity + bucket.rate * seconds


async def drain(bucket: TokenBucket, requests: int) -> int:
    """Spend tokens for up to `requests` requests; return how many were allowed."""
    return sum(bucket.take() for _ in range(requests))

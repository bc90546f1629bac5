"""The upstream pool: how many calls may be in flight to one upstream at once, and how long a
call waits for a place before it is refused.

Without a bound on that wait, clients that stall while they hold upstream connections make
every other caller queue until its own timeout, minutes later. Here a caller that finds the pool
full waits at most `acquire_timeout_s`, then gets `UpstreamPoolFull` (503): an error of its own,
distinct from a connection that could not be opened, and not retried on the same upstream.

The places are counted here rather than by the HTTP client's own pool, so that the wait is seen
(aiohttp's pool limit is off; litellm's clients are bounded by the same count), and per event
loop, like the HTTP sessions: `configure` sets the limits of the running loop (the server does
at startup), other loops get the defaults."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

from llmkit.errors import UpstreamPoolFull

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class PoolLimits:
    size: int = 512
    acquire_timeout_s: float = 5.0


@dataclass
class _LoopPools:
    limits: PoolLimits
    places: dict[str, asyncio.Semaphore] = field(default_factory=dict)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPools] = (
    weakref.WeakKeyDictionary()
)


def _for_loop() -> _LoopPools:
    loop = asyncio.get_running_loop()
    pools = _pools.get(loop)
    if pools is None:
        pools = _pools[loop] = _LoopPools(PoolLimits())
    return pools


def configure(limits: PoolLimits) -> None:
    """Use `limits` for the running loop's upstreams from now on."""
    _pools[asyncio.get_running_loop()] = _LoopPools(limits)


def limits() -> PoolLimits:
    return _for_loop().limits


async def acquire(upstream: str, where: str) -> asyncio.Semaphore:
    """A place in `upstream`'s pool, which the caller releases (`.release()`) when its call is
    over, streams included. `where` names the upstream in the error."""
    pools = _for_loop()
    places = pools.places.get(upstream)
    if places is None:
        places = pools.places[upstream] = asyncio.Semaphore(pools.limits.size)
    if not places.locked():
        await places.acquire()  # free: returns without waiting
        return places
    wait = pools.limits.acquire_timeout_s
    try:
        async with asyncio.timeout(wait):
            await places.acquire()
    except TimeoutError:
        raise UpstreamPoolFull(
            f"All {pools.limits.size} connections to {where} are in use and none came free"
            f" within {wait:g} s; try again shortly",
            headers={"retry-after": str(RETRY_AFTER_S)},
        ) from None
    return places

"""The evals benchmark's baseline client: replay recorded request bodies to an upstream with
httpx (or aiohttp), N in flight at once, and print `{"send_s": ..., "ok": ..., "failed": ...}`.

    python bench/eval_direct.py URL BODIES.jsonl --jobs 16 [--client httpx|aiohttp]

URL ends in /v1; BODIES holds one raw JSON body per line (as `eval_upstream.py` writes them).
This is the least a Python client can do for the same requests: no prompt files, no rendering,
no run log, no assertions. Comparing the two clients shows how much of the baseline is the
HTTP client rather than the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

TIMEOUT_S = 60.0


HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "Authorization": "Bearer x",
}


async def replay_aiohttp(url: str, bodies: list[bytes], jobs: int) -> dict[str, float | int]:
    import aiohttp

    limit = asyncio.Semaphore(jobs)
    ok = failed = 0
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512), timeout=timeout
    ) as session:

        async def one(body: bytes) -> None:
            nonlocal ok, failed
            async with (
                limit,
                session.post(url + "/chat/completions", data=body, headers=HEADERS) as response,
            ):
                data = json.loads(await response.read())
            if response.status == 200 and isinstance(data.get("choices"), list):
                ok += 1
            else:
                failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        elapsed = time.perf_counter() - started
    return {"send_s": elapsed, "ok": ok, "failed": failed}


async def replay(url: str, bodies: list[bytes], jobs: int) -> dict[str, float | int]:
    limit = asyncio.Semaphore(jobs)
    headers = HEADERS
    ok = failed = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_S) as client:

        async def one(body: bytes) -> None:
            nonlocal ok, failed
            async with limit:
                response = await client.post(
                    url + "/chat/completions", content=body, headers=headers
                )
                data = json.loads(response.content)
            if response.status_code == 200 and isinstance(data.get("choices"), list):
                ok += 1
            else:
                failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        elapsed = time.perf_counter() - started
    return {"send_s": elapsed, "ok": ok, "failed": failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx")
    args = parser.parse_args()
    bodies = [line for line in args.bodies.read_bytes().splitlines() if line.strip()]
    send = replay_aiohttp if args.client == "aiohttp" else replay
    result = asyncio.run(send(args.url, bodies, args.jobs))
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

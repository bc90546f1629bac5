"""What a run-log id costs a call: `RunLog.new_id(wait=False)` (what the event loop calls) against
`new_trace_id()` (a uuid4, which every call already pays), per call, and how many write
transactions the ids took (blocks reserved ahead, doubling to MAX_ID_BLOCK).

    python bench/runlog_ids.py [--calls 200000] [--db /tmp/ids.db]

Prints one JSON object: microseconds per call of each, their ratio, and the reservations made.
Ids that were not at hand (the reserve thread behind) are counted as `misses`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from llmkit.db import Database
from llmkit.runlog import RunLog
from llmkit.runlog_ids import MAX_ID_BLOCK
from llmkit.runlog_record import new_trace_id


def per_call_us(make: object, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        make()  # type: ignore[operator]
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    path = args.db or Path(tempfile.mkdtemp()) / "ids.db"
    log = RunLog(Database(path))
    log.start()
    time.sleep(0.2)  # the first block, reserved ahead
    first = log.new_id()
    misses = 0

    def take() -> None:
        nonlocal misses
        if log.new_id(wait=False) is None:
            misses += 1

    baseline = per_call_us(new_trace_id, args.calls)
    ids = per_call_us(take, args.calls)
    last = log.new_id()
    log.close()
    counter = Database(path).reader().execute("SELECT next_id FROM run_log_ids").fetchone()[0]
    blocks, size = 0, 1
    reserved = 0
    while reserved < counter - 1:
        reserved += size
        size = min(size * 2, MAX_ID_BLOCK)
        blocks += 1
    print(
        json.dumps(
            {
                "calls": args.calls,
                "trace_id_us": round(baseline, 3),
                "log_id_us": round(ids, 3),
                "ratio": round(ids / baseline, 2),
                "misses": misses,
                "ids_handed_out": (last or 0) - (first or 0) + 1,
                "reservations": blocks,
            }
        )
    )


if __name__ == "__main__":
    main()

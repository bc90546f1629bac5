"""The traces pages on a 1,000,000-row run log: the first page, a deep page by cursor, the page
back from it (Newer), a filtered first page and one call's page, each beside the API's
`GET /v1/ui/logs` for the same rows and `/healthz`, measured in the same run.

Run by hand, never by the test suite:

    python bench/web_traces.py                        # 1,000,000 rows in a temp dir
    python bench/web_traces.py --rows 100000 --runs 30 --out /tmp/web_traces.json

The log is generated as bench/runlog_scale.py generates it (200 prompts, two models, 30 days;
its rollup migration runs when the app opens it), in the database of a small repository. The
app is the real one (create_app) over starlette's TestClient, so each figure is the server's
whole answer: routing, the admin key, the run-log reads and the template. Requests are
interleaved run by run, pages and baselines alike, so that a busy machine slows them all;
figures are the median and the nearest-rank p95 of `--runs` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
for folder in (PROJECT_ROOT, BENCH_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fastapi.testclient import TestClient
from runlog_scale import generate
from web_pages import nearest_rank

from llmkit.api.app import create_app
from llmkit.config import Settings
from llmkit.runlog_query import encode_cursor
from tests.helpers import HELLO_PROMPT, init_repo

TARGET_MS = 100.0
HTML = {"Accept": "text/html"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=None, help="where the repository goes")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "web_traces.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        repo = init_repo(Path(tmp) / "repo", {"prompts/hello.md": HELLO_PROMPT}).root
        db_path = repo / ".llmkit" / "llmkit.db"
        db_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {args.rows:,} rows ...", flush=True)
        print(f"generated in {generate(db_path, args.rows):.1f} s", flush=True)
        started = time.perf_counter()
        app = create_app(Settings.resolve(repo, watch=False))
        ws = app.state.ws
        ws.runlog.count()  # opening the run log migrates it: the rollup backfill
        print(f"app opened (rollup backfill) in {time.perf_counter() - started:.1f} s")
        _, key = ws.keys.create("bench", "admin")
        admin = {"Authorization": f"Bearer {key}"}

        deep = args.rows * 9 // 10
        above, deep_row = (
            ws.runlog._db.reader()
            .execute(
                "SELECT created_at, id FROM run_log ORDER BY created_at DESC, id DESC"
                " LIMIT 2 OFFSET ?",
                (deep - 1,),
            )
            .fetchall()
        )
        cursor = encode_cursor(above[0], above[1])  # what the Older link of the page above holds
        back = encode_cursor(deep_row[0], deep_row[1])  # what the deep page's Newer link holds
        cases = {
            "traces: first page": ("/traces", HTML),
            f"traces: page at row {deep:,} (Older, by cursor)": (f"/traces?cursor={cursor}", HTML),
            f"traces: page back from row {deep:,} (Newer)": (f"/traces?before={back}", HTML),
            "traces: first page, prompt + status": (
                "/traces?prompt=prompt/007&status=error",
                HTML,
            ),
            f"trace: call #{deep_row[1]}": (f"/traces/{deep_row[1]}", HTML),
            "baseline: GET /v1/ui/logs, first page": ("/v1/ui/logs?limit=50", {}),
            f"baseline: GET /v1/ui/logs, page at row {deep:,}": (
                f"/v1/ui/logs?cursor={cursor}&limit=50",
                {},
            ),
            "baseline: GET /healthz": ("/healthz", {}),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        with TestClient(app) as client:
            for run in range(args.runs + 1):
                for name, (url, headers) in cases.items():
                    started = time.perf_counter()
                    response = client.get(url, headers={**admin, **headers})
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, (url, response.text[:500])
                    if run:  # the first round warms the caches
                        times[name].append(elapsed * 1000)
            first = client.get("/traces", headers={**admin, **HTML}).text
            assert first.count('<a href="/traces/') == 50, "the first page shows 50 calls"
        results = []
        print(f"\n{'page':<52} {'median':>9} {'p95':>9}")
        for name, values in times.items():
            median = statistics.median(values)
            row = {
                "page": name,
                "median_ms": round(median, 2),
                "p95_ms": round(nearest_rank(values, 95), 2),
            }
            results.append(row)
            print(f"{name:<52} {median:>7.2f} ms {row['p95_ms']:>6.2f} ms")
        by_name = {r["page"]: r for r in results}
        api_first = by_name["baseline: GET /v1/ui/logs, first page"]["median_ms"]
        api_deep = by_name[f"baseline: GET /v1/ui/logs, page at row {deep:,}"]["median_ms"]
        ratios = {
            "first page / API first page": round(
                by_name["traces: first page"]["median_ms"] / api_first, 2
            ),
            "deep page / API deep page": round(
                by_name[f"traces: page at row {deep:,} (Older, by cursor)"]["median_ms"] / api_deep,
                2,
            ),
        }
        pages = [r for r in results if not r["page"].startswith("baseline")]
        within = all(r["p95_ms"] <= TARGET_MS for r in pages)
        print(f"\nratios (median): {ratios}")
        print(f"every page's p95 within {TARGET_MS:g} ms: {within}")
        # Figures from a shared machine are only comparable with the load they were taken at.
        load = [round(x, 2) for x in os.getloadavg()]
        print(f"load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} cores")
        ws.close()
    report = {
        "rows": args.rows,
        "runs": args.runs,
        "results": results,
        "ratios": ratios,
        "target_ms": TARGET_MS,
        "within_target": within,
        "load_average": load,
        "cores": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

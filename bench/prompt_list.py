"""`GET /v1/ui/prompts` over 5,000 prompts: the first page, a deep page and a prefix, beside the
whole list (what the route answered before it paged), measured in the same run.

Run by hand, never by the test suite:

    python bench/prompt_list.py                     # 5,000 prompts x 2 versions in a temp dir
    python bench/prompt_list.py --prompts 20000 --runs 5

The repository comes from bench/gen_repo.py; the app is the real one (create_app) over
starlette's TestClient, so each figure includes routing, auth and JSON. The baseline is the
whole list, served by a route added to the same app for the run. Each figure is given cold
(the parse cache of prompt files emptied first) and warm (the same request again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
for folder in (PROJECT_ROOT, BENCH_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fastapi.testclient import TestClient
from gen_repo import generate

from llmkit.api.app import create_app
from llmkit.config import Settings
from llmkit.prompt_views import prompt_fields
from llmkit.versions import _parse_cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5000)
    parser.add_argument("--versions", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "prompt_list.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        generated = generate(root, prompts=args.prompts, versions=args.versions)
        app = create_app(Settings.resolve(root, watch=False))
        ws = app.state.ws
        _, key = ws.keys.create("bench", "admin")

        def whole_list() -> list[dict[str, Any]]:
            return [prompt_fields(p) for p in ws.index.list_prompts()]

        app.add_api_route("/bench/whole-list", whole_list)
        folder = next(k for k in generated.keys if "/" in k).rsplit("/", 1)[0] + "/"
        cases = {
            "first page (no paging parameters)": "/v1/ui/prompts",
            "page 40 of 100": "/v1/ui/prompts?page=40&limit=100",
            f"prefix {folder}": f"/v1/ui/prompts?prefix={folder}&limit=1000",
            "baseline: the whole list": "/bench/whole-list",
        }
        headers = {"Authorization": f"Bearer {key}"}
        results = []
        with TestClient(app) as client:
            for name, url in cases.items():
                # Cold: nothing parsed yet (as after a start, or after a listing of more
                # prompts than the parse cache holds); warm: the same page again.
                cold: list[float] = []
                warm: list[float] = []
                for _ in range(args.runs):
                    _parse_cached.cache_clear()
                    for times in (cold, warm, warm):
                        started = time.perf_counter()
                        response = client.get(url, headers=headers)
                        times.append(time.perf_counter() - started)
                        assert response.status_code == 200, response.text
                items, size = len(response.json()), len(response.content)
                row = {
                    "figure": name,
                    "cold_ms": round(statistics.median(cold) * 1000, 1),
                    "warm_ms": round(statistics.median(warm) * 1000, 1),
                    "items": items,
                    "bytes": size,
                }
                results.append(row)
                print(
                    f"{name:<40} cold {row['cold_ms']:>8.1f} ms  warm {row['warm_ms']:>8.1f} ms"
                    f"  {items:>5} items {size:>10,} bytes"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"prompts": args.prompts, "results": results}, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()

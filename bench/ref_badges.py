"""The prompt list (`GET /`) with branch and tag badges, on 1,000 prompts x 20 versions: the page
with no refs besides the served branch (the baseline), then with a branch, a tag and a branch at
the served commit, cold (the refs' trees not read yet) and warm (nothing moved), measured in the
same run; and the reading of the refs alone (`RefVersions.marks`).

Run by hand, never by the test suite:

    python bench/ref_badges.py                   # 1,000 prompts x 20 versions in a temp dir
    python bench/ref_badges.py --prompts 200 --runs 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
for folder in (PROJECT_ROOT, BENCH_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from fastapi.testclient import TestClient
from gen_repo import generate

from llmkit.api.app import create_app
from llmkit.config import Settings
from llmkit.ref_versions import RefVersions


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 1)


def timed(
    action: Callable[[], object], runs: int, before: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return median_ms(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        generate(root, prompts=args.prompts, versions=args.versions, model="echo")
        app = create_app(Settings.resolve(root, watch=False))
        ws = app.state.ws
        _, key = ws.keys.create("bench", "admin")
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/html"}
        with TestClient(app) as client:

            def page() -> None:
                answered = client.get("/", headers=headers)
                assert answered.status_code == 200, answered.text

            def forget() -> None:
                app.state.ref_versions = RefVersions()

            page()  # the parse cache filled, as on a running server
            baseline = timed(page, args.runs)

            def git(*args: str) -> None:
                subprocess.run(["git", *args], cwd=root, check=True)

            git("branch", "feature", "HEAD~5")  # 5 prompts differ
            git("tag", "-a", "v1.0", "-m", "release", f"HEAD~{args.prompts * 2}")
            git("branch", "same")  # at the served commit
            cold = timed(page, args.runs, before=forget)
            page()
            warm = timed(page, args.runs)
            refs = RefVersions()
            marks_cold = timed(
                lambda: refs.marks(ws.index), args.runs, before=lambda: refs.__init__()
            )
            marks_warm = timed(lambda: refs.marks(ws.index), args.runs)
            badges = client.get("/", headers=headers).text.count('class="badge ref')
    print(f"{args.prompts} prompts x {args.versions} versions, 3 refs, {badges} badges listed")
    print(f"GET / without refs (baseline)        {baseline:>8.1f} ms  1.00x")
    print(f"GET / with refs, cold                {cold:>8.1f} ms  {cold / baseline:.2f}x")
    print(f"GET / with refs, warm                {warm:>8.1f} ms  {warm / baseline:.2f}x")
    print(f"RefVersions.marks cold               {marks_cold:>8.1f} ms")
    print(f"RefVersions.marks warm               {marks_warm:>8.1f} ms")


if __name__ == "__main__":
    main()

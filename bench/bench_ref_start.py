"""`llmkit serve --ref main`: start to ready, and commit to served, on a 1,000 prompts x 20
versions repository, beside serving the working tree (`llmkit serve`) measured in the same run.

Run by hand, never by the test suite:

    python bench/bench_ref_start.py                     # generates the repository in a temp dir
    python bench/bench_ref_start.py --prompts 200 --runs 5

Each figure is the median of `--runs` starts, the two modes interleaved so that a noisy machine
weighs on both alike:
- cold start: an empty data folder (the index is built from git: `git log` and every blob);
- warm start: the data folder of the previous start (the index is only checked against git);
- commit to served: a commit of one prompt on main, until `/healthz` names it (the watcher,
  then a sync: the working tree's, or the ref's, which also builds a new snapshot).
Results go to bench/results/ref_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
for path in (BENCH_DIR, PROJECT_ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from gen_repo import generate, prompt_text

from tests.helpers import free_port

START_TIMEOUT_S = 300.0
SERVED_TIMEOUT_S = 30.0
MODES = {"working tree": (), "--ref main": ("--ref", "main")}
GIT_IDENTITY = ("-c", "user.name=Bench", "-c", "user.email=bench@example.com")


def health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except OSError:
        return None


class Server:
    """A real `python -m llmkit serve` on 127.0.0.1, timed from launch to its first /healthz."""

    def __init__(self, repo: Path, data_dir: Path, flags: tuple[str, ...]) -> None:
        self.port = free_port()
        env = {**os.environ, "LLMKIT_DATA_DIR": str(data_dir), "PYTHONPATH": str(PROJECT_ROOT)}
        env = {
            k: v for k, v in env.items() if not k.startswith("LLMKIT_") or k == "LLMKIT_DATA_DIR"
        }
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmkit",
                "serve",
                "--repo",
                str(repo),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *flags,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def ready(self) -> float:
        """Seconds from launch to the first answer of /healthz."""
        deadline = self.started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise RuntimeError(f"llmkit serve exited: {self.proc.stderr.read().decode()}")
            if health(self.port) is not None:
                return time.perf_counter() - self.started
            time.sleep(0.01)
        raise RuntimeError(f"llmkit serve did not answer within {START_TIMEOUT_S} s")

    def served_after_commit(self, repo: Path, key: str, n: int) -> float:
        """Seconds from a commit changing `key` to /healthz naming it."""
        path = repo / "prompts" / f"{key}.md"
        path.write_text(prompt_text(key, 1000 + n))
        git(repo, "add", "--", str(path))
        started = time.perf_counter()
        git(repo, "commit", "-q", "-m", f"bench {n}")
        sha = git(repo, "rev-parse", "HEAD")
        deadline = started + SERVED_TIMEOUT_S
        while time.perf_counter() < deadline:
            body = health(self.port)
            if body is not None and body.get("head") == sha:
                return time.perf_counter() - started
            time.sleep(0.005)
        raise RuntimeError(f"{sha} was not served within {SERVED_TIMEOUT_S} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-ref-"))
    try:
        began = time.perf_counter()
        repo = generate(work / "repo", args.prompts, args.versions)
        print(
            f"{args.prompts} prompts x {args.versions} versions = {repo.commits} commits"
            f" ({time.perf_counter() - began:.1f} s to generate)"
        )
        times: dict[tuple[str, str], list[float]] = {}
        commits = 0
        for run in range(args.runs):
            for mode, flags in MODES.items():
                data = work / f"data-{mode.replace(' ', '-')}"
                shutil.rmtree(data, ignore_errors=True)
                for kind in ("cold start", "warm start"):
                    server = Server(repo.root, data, flags)
                    try:
                        times.setdefault((mode, kind), []).append(server.ready())
                        if kind == "warm start":
                            commits += 1
                            key = repo.keys[commits % len(repo.keys)]
                            served = server.served_after_commit(repo.root, key, commits)
                            times.setdefault((mode, "commit to served"), []).append(served)
                    finally:
                        server.stop()
        rows = []
        print(f"\n{'figure':<18} {'working tree':>13} {'--ref main':>11} {'ratio':>7}")
        for kind in ("cold start", "warm start", "commit to served"):
            base = statistics.median(times[("working tree", kind)])
            ref = statistics.median(times[("--ref main", kind)])
            rows.append({"figure": kind, "working_tree_s": base, "ref_s": ref, "ratio": ref / base})
            print(f"{kind:<18} {base:>12.3f}s {ref:>10.3f}s {ref / base:>6.2f}x")
        out = BENCH_DIR / "results" / "ref_start.json"
        out.parent.mkdir(exist_ok=True)
        meta = {"prompts": args.prompts, "versions": args.versions, "runs": args.runs}
        out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
        print(f"\nmedians of {args.runs} runs; written to {out.relative_to(PROJECT_ROOT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

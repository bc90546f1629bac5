"""Benchmark of `llmkit import-llmkit` on a generated LLMKit database.

Run by hand, never by the test suite:

    python bench/import_llmkit.py                          # 100 prompts x 10 versions, 20k logs
    python bench/import_llmkit.py --prompts 200 --versions 20 --logs 50000 --runs 3

The LLMKit database is made from LLMKit's own migrations ($LLMKIT_REFERENCE_DIR, default
/work/shared/reference). Each figure is the median of --runs runs, each into a fresh repository,
set against a baseline measured in the same run: the same versions committed one at a time
through `GitStore.commit_file` (the path of every API write), and, for the second, idle run,
`git rev-parse HEAD`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from llmkit.config import Settings
from llmkit.import_source import open_source
from llmkit.importer import import_llmkit
from llmkit.promptfile import Message, PromptFile, serialize
from llmkit.store import GitStore

REFERENCE = Path(os.environ.get("LLMKIT_REFERENCE_DIR", "/work/shared/reference"))


def build_llmkit_db(path: Path, prompts: int, versions: int, logs: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for sql_file in sorted((REFERENCE / "llmkit-migrations-7ae6621").glob("*.sql")):
        conn.executescript(sql_file.read_text("utf-8"))
    model = conn.execute("SELECT id FROM model ORDER BY id LIMIT 1").fetchone()[0]
    conn.execute("BEGIN")
    version_ids = []
    for p in range(prompts):
        prompt_id = conn.execute(
            "INSERT INTO prompt (key) VALUES (?)", (f"bench/p{p:04d}",)
        ).lastrowid
        for v in range(1, versions + 1):
            when = (
                f"2025-01-01 00:{(p * versions + v) // 60 % 60:02d}:{(p * versions + v) % 60:02d}"
            )
            cursor = conn.execute(
                "INSERT INTO prompt_version (prompt_id, version_number, system, user, model_id,"
                " max_tokens, temperature, json_mode, prompt_type, is_chat, created_at)"
                " VALUES (?, ?, ?, ?, ?, 256, 0.7, 0, 'dynamic_both', 0, ?)",
                (
                    prompt_id,
                    v,
                    f"You are helper {p}, revision {v}.\n" * 20,
                    "{{ question }}",
                    model,
                    when,
                ),
            )
            version_ids.append((prompt_id, cursor.lastrowid))
        conn.execute(
            "UPDATE prompt SET current_prompt_version_id = ? WHERE id = ?",
            (version_ids[-1][1], prompt_id),
        )
        eval_id = conn.execute(
            "INSERT INTO prompt_eval (prompt_id, name, input_data) VALUES (?, 'basic', ?)",
            (prompt_id, json.dumps({"question": "why?"})),
        ).lastrowid
        for prompt_of, vid in version_ids[-versions:]:
            conn.execute(
                "INSERT INTO prompt_eval_run (run_id, prompt_version_id, prompt_eval_id, score,"
                " output) VALUES (?, ?, ?, 3, 'an answer')",
                (f"run-{vid}", vid, eval_id),
            )
    body = json.dumps({"messages": [{"role": "user", "content": "hello " * 50}]})
    answer = json.dumps({"choices": [{"message": {"content": "hi " * 50}}]})
    for i in range(logs):
        prompt_id, _ = version_ids[i % len(version_ids)]
        conn.execute(
            "INSERT INTO log (prompt_id, model_id, input_tokens, output_tokens, status_code,"
            " request_body, response_data, created_at) VALUES (?, ?, 10, 20, 200, ?, ?,"
            " '2025-02-01 00:00:00')",
            (prompt_id, model, body, answer),
        )
    conn.execute("COMMIT")
    conn.close()


def fresh_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.name", "Bench"],
        ["config", "user.email", "bench@example.com"],
        ["config", "commit.gpgsign", "false"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)
    (root / ".gitignore").write_text(".llmkit/\n")
    subprocess.run(["git", "add", ".gitignore"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "start"], cwd=root, check=True)
    return root


def commit_one_by_one(db_path: Path, repo: Path) -> float:
    """The baseline: the same version texts, one GitStore.commit_file each."""
    with open_source(db_path) as source:
        keys = {p.id: p.key for p in source.prompts.values()}
        texts = [
            (
                keys[v.prompt_id],
                serialize(
                    PromptFile(
                        meta={"model": "openai/gpt-4o"},
                        messages=[Message("system", v.system.strip()), Message("user", v.user)],
                    )
                ),
            )
            for v in sorted(source.versions, key=lambda v: v.id)
            if v.prompt_id in keys and keys[v.prompt_id].startswith("bench/")
        ]
    store = GitStore(repo, repo / ".llmkit" / "write.lock")
    started = time.perf_counter()
    for key, text in texts:
        store.commit_file(f"prompts/{key}.md", text.encode(), message=f"Update {key}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--logs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        work = Path(tmp)
        db_path = work / "llmkit.db"
        build_llmkit_db(db_path, args.prompts, args.versions, args.logs)
        print(
            f"LLMKit database: {args.prompts} prompts x {args.versions} versions, {args.logs} logs,"
            f" {os.path.getsize(db_path) / 1e6:.1f} MB"
        )
        imports, idle, baselines, heads = [], [], [], []
        for run in range(args.runs):
            repo = fresh_repo(work / f"import-{run}")
            settings = Settings.resolve(repo)
            started = time.perf_counter()
            summary = import_llmkit(settings, db_path)
            imports.append(time.perf_counter() - started)
            assert summary.versions >= args.prompts * args.versions, summary.versions
            started = time.perf_counter()
            again = import_llmkit(settings, db_path)
            idle.append(time.perf_counter() - started)
            assert not again.changed
            started = time.perf_counter()
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True)
            heads.append(time.perf_counter() - started)
            baselines.append(commit_one_by_one(db_path, fresh_repo(work / f"baseline-{run}")))
        full, base = statistics.median(imports), statistics.median(baselines)
        rerun, head = statistics.median(idle), statistics.median(heads)
        versions = args.prompts * args.versions
        print(f"import (versions, eval rows, logs): {full:.2f} s")
        print(f"baseline, {versions} commit_file calls alone: {base:.2f} s")
        print(f"ratio import / baseline: {full / base:.2f}")
        print(
            f"second import (nothing new): {rerun:.3f} s; git rev-parse HEAD: {head * 1000:.1f} ms"
        )
        digest = hashlib.sha256(str(sorted(vars(args).items())).encode()).hexdigest()[:8]
        print(f"(runs={args.runs}, settings {digest})")


if __name__ == "__main__":
    main()

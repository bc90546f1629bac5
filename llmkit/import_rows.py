"""The durable side of `llmkit import-llmkit`: LLMKit's eval runs, human scores and logs as
eval_results and run-log rows, and the table `import_llmkit` that records what each LLMKit row
became.

Eval results are recorded in the transaction that writes them. Log rows are written through the
run log and recorded after it has written them; their trace ids are derived from the source and
the LLMKit id, so a row written but not recorded (a kill in between) is recognized and never
written twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from llmkit.db import Migrations
from llmkit.errors import LlmkitError
from llmkit.import_history import LATEST, Plan
from llmkit.import_land import fault
from llmkit.import_source import LLMKitSource, SourceLog, SourceVersion
from llmkit.promptfile import section_text
from llmkit.runlog_record import RunRecord, canonical_time
from llmkit.workspace import Workspace

Progress = Callable[[str, int, int], None]

LOG_CHUNK = 500


MIGRATIONS = Migrations("import_llmkit")
migration = MIGRATIONS.register


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE import_llmkit (
            source TEXT NOT NULL,
            kind TEXT NOT NULL,
            llmkit_id TEXT NOT NULL,
            target TEXT NOT NULL,
            imported_at TEXT NOT NULL,
            PRIMARY KEY (source, kind, llmkit_id)
        )
        """
    )


@dataclass
class Recorded:
    """What earlier imports of this source recorded. Of the commits only the versions that
    made none (`same_as`) count here: the history is what says which versions are in."""

    same_as: dict[int, str] = field(default_factory=dict)  # LLMKit version id -> commit
    results: set[int] = field(default_factory=set)
    runs: dict[str, str] = field(default_factory=dict)  # LLMKit run_id -> eval_runs.run_id
    logs: set[int] = field(default_factory=set)


def read_recorded(conn: sqlite3.Connection | None, identity: str) -> Recorded:
    recorded = Recorded()
    if conn is None:
        return recorded
    try:
        rows = conn.execute(
            "SELECT kind, llmkit_id, target FROM import_llmkit WHERE source = ?", (identity,)
        ).fetchall()
    except sqlite3.OperationalError:
        return recorded  # no import has run here yet
    for kind, llmkit_id, target in rows:
        if kind == "same_version":
            recorded.same_as[int(llmkit_id)] = target
        elif kind == "eval_result":
            recorded.results.add(int(llmkit_id))
        elif kind == "eval_run":
            recorded.runs[llmkit_id] = target
        elif kind == "log":
            recorded.logs.add(int(llmkit_id))
    return recorded


def _record(conn: sqlite3.Connection, identity: str, rows: list[tuple[str, str, str]]) -> None:
    """Record what LLMKit rows became; a row already recorded as the same is left as it was."""
    now = canonical_time(datetime.now(UTC), "imported_at")
    conn.executemany(
        "INSERT INTO import_llmkit (source, kind, llmkit_id, target, imported_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, kind, llmkit_id) DO UPDATE"
        " SET target = excluded.target, imported_at = excluded.imported_at"
        " WHERE import_llmkit.target != excluded.target",
        [(identity, kind, llmkit_id, target, now) for kind, llmkit_id, target in rows],
    )


def trace_id(identity: str, log_id: int) -> str:
    """The run-log trace id of an imported log row: the same on every run."""
    return hashlib.sha256(f"llmkit-import\0{identity}\0log\0{log_id}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class VersionRef:
    key: str
    sha: str | None
    number: int | None
    model: str


def version_refs(ws: Workspace, source: LLMKitSource, plan: Plan) -> dict[int, VersionRef]:
    """LLMKit version id -> the prompt key, commit and llmkit version number it became."""
    numbers: dict[str, dict[str, int | None]] = {}
    refs = {}
    for version in source.versions:
        key = plan.keys.get(version.prompt_id)
        sha = plan.version_sha(version.id)
        if key is None or sha is None:
            continue
        if key not in numbers:
            try:
                numbers[key] = {v.sha: v.number for v in ws.index.versions(key) if v.sha}
            except LlmkitError:
                numbers[key] = {}
        target = plan.targets.get(version.model_id)
        model = target.model if target else "default"
        refs[version.id] = VersionRef(key, sha, numbers[key].get(sha), model)
    return refs


def record_commits(ws: Workspace, plan: Plan) -> None:
    """What each version and eval case became (its commit, its file), for the record, whether
    this run committed it or an earlier one did (one killed before it could record it); and the
    versions that made no commit of their own (the same file as the one before) and could not
    say so in a trailer of this import's commits."""
    rows = [
        ("version", str(vid), sha)
        for vid in plan.version_at
        if (sha := plan.version_sha(vid)) is not None
    ]
    rows += [("same_version", str(vid), sha) for vid, sha in plan.same_as.items() if sha]
    rows += [("eval", str(eid), path) for eid, (path, _) in plan.eval_files.items()]
    if rows:
        with ws.durable.write() as conn:
            _record(conn, plan.summary.identity, rows)


def write_eval_rows(
    ws: Workspace,
    source: LLMKitSource,
    plan: Plan,
    refs: dict[int, VersionRef],
    recorded: Recorded,
    report: Progress,
) -> None:
    """New eval results, grouped by LLMKit run, in one transaction with their records."""
    from llmkit.evals.records import EvalRecords, StoredResult, insert_results, insert_run

    EvalRecords(ws.durable)  # its tables
    summary = plan.summary
    rounds: dict[tuple[str, int], int] = {}
    repeat: dict[int, int] = {}
    runs: dict[str, list[Any]] = {}
    for row in source.eval_runs:
        repeat[row.id] = rounds.get((row.run_id, row.eval_id), 0)
        rounds[(row.run_id, row.eval_id)] = repeat[row.id] + 1
        runs.setdefault(row.run_id, []).append(row)
    pending = {
        run: rows for run, rows in runs.items() if any(r.id not in recorded.results for r in rows)
    }
    if not pending:
        return
    report("Eval results", 0, len(pending))
    with ws.durable.write() as conn:
        for done, (llmkit_run, rows) in enumerate(pending.items(), 1):
            results, imported = [], []
            for row in rows:
                ref = refs.get(row.version_id)
                if row.id in recorded.results:
                    continue
                if ref is None:
                    summary.notes.append(
                        f"LLMKit eval result {row.id}: its version {row.version_id} was not"
                        " imported; skipped"
                    )
                    continue
                path, name = plan.eval_files.get(row.eval_id, (None, f"LLMKit eval {row.eval_id}"))
                score = row.score if row.score is not None and 1 <= row.score <= 5 else None
                results.append(
                    StoredResult(
                        prompt_key=ref.key,
                        version_number=ref.number,
                        version_sha=ref.sha,
                        case_name=name,
                        file=path,
                        model=ref.model,
                        repeat_index=repeat[row.id],
                        output=row.output,
                        created_at=_time(row.created_at),
                        human_score=score,
                    )
                )
                imported.append(row.id)
                summary.scores += score is not None
            if not results:
                continue
            run_id = recorded.runs.get(llmkit_run)
            if run_id is None:
                run_id = _new_run_id(conn, llmkit_run)
                times = [t for r in rows if (t := r.created_at) is not None]
                insert_run(
                    conn,
                    run_id,
                    started_at=_time(min(times) if times else None),
                    finished_at=_time(max(times) if times else None),
                    source="import",
                    ref=results[0].version_sha,
                    summary={"imported_from": "LLMKit", "llmkit_run_id": llmkit_run},
                )
                _record(conn, summary.identity, [("eval_run", llmkit_run, run_id)])
                summary.eval_runs += 1
            ids = insert_results(conn, run_id, results)
            _record(
                conn,
                summary.identity,
                [("eval_result", str(i), str(n)) for i, n in zip(imported, ids)],
            )
            summary.eval_results += len(ids)
            report("Eval results", done, len(pending))


def _new_run_id(conn: sqlite3.Connection, llmkit_run: str) -> str:
    """LLMKit's run id, unless a run here already has it."""
    wanted = llmkit_run.strip()[:100] or uuid.uuid4().hex
    taken = conn.execute("SELECT 1 FROM eval_runs WHERE run_id = ?", (wanted,)).fetchone()
    return uuid.uuid4().hex if taken else wanted


def _time(moment: datetime | None) -> str:
    return canonical_time(moment or datetime.now(UTC), "created_at")


def write_logs(
    ws: Workspace,
    source: LLMKitSource,
    plan: Plan,
    refs: dict[int, VersionRef],
    recorded: Recorded,
    report: Progress,
) -> None:
    """New log rows through the run log, a chunk at a time: write, wait until written, then
    record. A row already in the run log (written, and the import killed before recording it)
    is recorded without being written again."""
    pending = [i for i in source.log_ids() if i not in recorded.logs]
    if not pending:
        return
    summary = plan.summary
    runlog = ws.runlog
    chooser = VersionChooser(source, refs)
    chunk: list[SourceLog] = []
    report("Logs", 0, len(pending))
    done = 0

    def settle() -> None:
        traces = {log.id: trace_id(source.identity, log.id) for log in chunk}
        present = _present_traces(ws, list(traces.values()))
        for log in chunk:
            if traces[log.id] not in present:
                runlog.log(_run_record(log, traces[log.id], plan, source, chooser))
                summary.logs += 1
        if not runlog.flush(timeout=120):
            raise LlmkitError(
                "The run log did not write the imported logs in time; run the import again"
                " (logs already written are recognized)"
            )
        fault("logs-written")
        with ws.durable.write() as conn:
            _record(conn, summary.identity, [("log", str(i), t) for i, t in traces.items()])
        chunk.clear()

    for log in source.logs(skip=recorded.logs):
        chunk.append(log)
        done += 1
        if len(chunk) >= LOG_CHUNK:
            settle()
            report("Logs", done, len(pending))
    if chunk:
        settle()
    report("Logs", done, len(pending))


def _present_traces(ws: Workspace, traces: list[str]) -> set[str]:
    """Those of `traces` the run log holds (one query for a chunk)."""
    marks = ", ".join("?" for _ in traces)
    rows = ws.durable.reader().execute(
        f"SELECT trace_id FROM run_log WHERE trace_id IN ({marks})", traces
    )
    return {row[0] for row in rows}


class VersionChooser:
    """Which version of a prompt made a logged call. LLMKit's log does not say, so: the latest
    version created by then whose system text is the request's system message when one is
    (a prompt without variables), else the latest version created by then, else the version
    current in LLMKit."""

    def __init__(self, source: LLMKitSource, refs: dict[int, VersionRef]) -> None:
        self.by_prompt: dict[int, list[SourceVersion]] = {}
        self.systems: dict[int, str] = {}
        for version in sorted(source.versions, key=lambda v: (v.created_at or LATEST, v.id)):
            if version.id in refs:
                self.by_prompt.setdefault(version.prompt_id, []).append(version)
                self.systems[version.id] = section_text(version.system)
        self.source = source
        self.refs = refs

    def choose(self, log: SourceLog, request: Any) -> VersionRef | None:
        versions = self.by_prompt.get(log.prompt_id or -1, [])
        before: list[SourceVersion] = []
        if log.created_at is not None:
            before = [
                v for v in versions if v.created_at is not None and v.created_at <= log.created_at
            ]
        system = _system_message(request)
        if system is not None:
            wanted = section_text(system)
            for version in reversed(before):
                if self.systems[version.id] == wanted:
                    return self.refs[version.id]
        if before:
            return self.refs[before[-1].id]
        prompt = self.source.prompts.get(log.prompt_id or -1)
        current = prompt.current_version_id if prompt else None
        return self.refs.get(current or -1)


def _system_message(request: Any) -> str | None:
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return None
    for message in request["messages"]:
        if isinstance(message, dict) and message.get("role") == "system":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def _run_record(
    log: SourceLog, trace: str, plan: Plan, source: LLMKitSource, chooser: VersionChooser
) -> RunRecord:
    request = _json_or_text(log.request_body)
    response = _json_or_text(log.response_data)
    ref = chooser.choose(log, request)
    prompt = source.prompts.get(log.prompt_id or -1)
    key = ref.key if ref else (prompt.key if prompt else "(no prompt)")
    target = plan.targets.get(log.model_id or -1)
    ok = (200 <= log.status_code < 300) if log.status_code is not None else response is not None
    return RunRecord(
        trace_id=trace,
        prompt_key=key or "(no prompt)",
        version_number=ref.number if ref else None,
        version_sha=ref.sha if ref else None,
        model=target.model if target else f"llmkit-model-{log.model_id}",
        request=request,
        response=response,
        status="ok" if ok else "error",
        error=None if ok else _error_text(response, log.status_code),
        http_status=log.status_code,
        input_tokens=log.input_tokens,
        output_tokens=log.output_tokens,
        reasoning_tokens=log.reasoning_tokens,
        stream=isinstance(request, dict) and request.get("stream") is True,
        source="api",
        created_at=_time(log.created_at),
    )


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_text(response: Any, status: int | None) -> str:
    if isinstance(response, dict):
        error = response.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str):
            return message
        if isinstance(error, str):
            return error
    if isinstance(response, str) and response.strip():
        return response[:2000]
    return f"HTTP {status}" if status is not None else "no response"


def count_rows(source: LLMKitSource, plan: Plan, recorded: Recorded) -> None:
    """A dry run's figures for the rows it would write."""
    summary = plan.summary
    prompt_of = {v.id: v.prompt_id for v in source.versions}
    new = [r for r in source.eval_runs if r.id not in recorded.results]
    importable = [r for r in new if prompt_of.get(r.version_id) in plan.keys]
    summary.eval_results = len(importable)
    summary.scores = sum(1 for r in importable if r.score is not None)
    summary.eval_runs = len({r.run_id for r in importable if r.run_id not in recorded.runs})
    summary.logs = sum(1 for i in source.log_ids() if i not in recorded.logs)

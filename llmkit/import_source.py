"""An LLMKit database, read (never written) for `llmkit import-llmkit`.

LLMKit, the original system, keeps prompts, versions, models, eval cases, eval runs, logs and
API keys as SQLite rows. Two schemas are in use: the seed's (commit 7ae6621) and upstream's
latest (5f5efba: users, tools, reasoning_effort, json_schema, split eval inputs, a nullable
provider base_url). Upstream edited its first migration in place, so a database may sit between
the two; the schema is therefore read from the tables and columns present, feature by feature,
and named after whichever commit it matches.

Everything is read inside one read transaction, so a running LLMKit writing meanwhile cannot
give the import half of a change. Log bodies can be large: they are streamed, not loaded.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from llmkit.errors import ConfigError

SCHEMA_SEED = "7ae6621"
SCHEMA_LATEST = "5f5efba"

# Tables and columns every LLMKit database has; without them it is not one we know.
REQUIRED: dict[str, tuple[str, ...]] = {
    "provider": ("id", "name"),
    "model": ("id", "provider_id", "name"),
    "prompt": ("id", "key", "current_prompt_version_id"),
    "prompt_version": (
        "id",
        "prompt_id",
        "version_number",
        "system",
        "user",
        "model_id",
        "max_tokens",
        "temperature",
        "json_mode",
        "prompt_type",
        "is_chat",
        "created_at",
    ),
}
# Optional tables, and the columns they need when present.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "prompt_eval": ("id", "prompt_id", "name", "created_at"),
    "prompt_eval_run": (
        "id",
        "run_id",
        "prompt_version_id",
        "prompt_eval_id",
        "score",
        "output",
        "created_at",
    ),
    "log": (
        "id",
        "prompt_id",
        "model_id",
        "input_tokens",
        "output_tokens",
        "status_code",
        "request_body",
        "response_data",
        "created_at",
    ),
    "api_key": ("id", "name", "created_at"),
}
# llmkit's own database, which someone may pass by mistake.
LLMKIT_OWN_TABLES = ("ix_commits", "run_log", "_migrations")


class ImportRefused(ConfigError):
    """The import cannot go ahead; nothing was changed. The CLI exits 2."""

    code = "import_refused"


@dataclass(frozen=True)
class SourceModel:
    id: int
    name: str
    provider: str
    base_url: str | None


@dataclass(frozen=True)
class SourcePrompt:
    id: int
    key: str
    current_version_id: int | None


@dataclass(frozen=True)
class SourceVersion:
    id: int
    prompt_id: int
    number: int
    system: str
    user: str
    model_id: int
    max_tokens: Any
    temperature: Any
    json_mode: bool
    prompt_type: str
    is_chat: bool
    created_at: datetime | None
    created_text: str
    json_schema: str | None = None
    reasoning_effort: str | None = None
    tools: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class SourceEval:
    """An eval case. The seed keeps one JSON object of template variables (`input_data`); the
    latest schema splits system variables from the user input (variables or a message)."""

    id: int
    prompt_id: int
    name: str
    evaluation_type: str | None
    input_data: str | None = None
    system_input: str | None = None
    user_input: str | None = None


@dataclass(frozen=True)
class SourceEvalRun:
    id: int
    run_id: str
    version_id: int
    eval_id: int
    score: int | None
    output: str
    created_at: datetime | None


@dataclass(frozen=True)
class SourceLog:
    id: int
    prompt_id: int | None
    model_id: int | None
    input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    status_code: int | None
    request_body: str | None
    response_data: str | None
    created_at: datetime | None
    provider_response_id: str | None = None


@dataclass(frozen=True)
class SourceKey:
    id: int
    name: str
    created_at: str


@dataclass
class LLMKitSource:
    """One LLMKit database opened read-only, with everything but the logs loaded."""

    path: Path
    identity: str
    schema: str
    conn: sqlite3.Connection
    models: dict[int, SourceModel] = field(default_factory=dict)
    prompts: dict[int, SourcePrompt] = field(default_factory=dict)
    versions: list[SourceVersion] = field(default_factory=list)
    evals: list[SourceEval] = field(default_factory=list)
    eval_runs: list[SourceEvalRun] = field(default_factory=list)
    keys: list[SourceKey] = field(default_factory=list)
    log_columns: tuple[str, ...] = ()

    def log_ids(self) -> list[int]:
        if not self.log_columns:
            return []
        return [int(r[0]) for r in self.conn.execute("SELECT id FROM log ORDER BY id")]

    def logs(self, skip: set[int]) -> Iterator[SourceLog]:
        """Every log row not in `skip`, oldest id first, read a few hundred at a time."""
        if not self.log_columns:
            return
        cursor = self.conn.execute(f"SELECT {', '.join(self.log_columns)} FROM log ORDER BY id")
        while rows := cursor.fetchmany(500):
            for row in rows:
                if int(row["id"]) in skip:
                    continue
                yield SourceLog(
                    id=int(row["id"]),
                    prompt_id=_int_or_none(row["prompt_id"]),
                    model_id=_int_or_none(row["model_id"]),
                    input_tokens=_int_or_none(row["input_tokens"]),
                    output_tokens=_int_or_none(row["output_tokens"]),
                    reasoning_tokens=_int_or_none(_get(row, "reasoning_tokens")),
                    status_code=_int_or_none(row["status_code"]),
                    request_body=_text_or_none(row["request_body"]),
                    response_data=_text_or_none(row["response_data"]),
                    created_at=parse_time(row["created_at"]),
                    provider_response_id=_text_or_none(_get(row, "provider_response_id")),
                )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_time(value: Any) -> datetime | None:
    """LLMKit's `YYYY-MM-DD HH:MM:SS` UTC text (or ISO-8601, or epoch seconds) as an aware
    datetime; None when it is missing or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def open_source(path: Path) -> LLMKitSource:
    """Open and read an LLMKit database; ImportRefused says why a file cannot be one."""
    path = Path(path)
    if not path.exists():
        raise ImportRefused(f"{path}: no such file (give the path of LLMKit's llmkit.db)")
    if not path.is_file():
        raise ImportRefused(f"{path} is not a file (give the path of LLMKit's llmkit.db)")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30
        )
    except sqlite3.Error as exc:
        raise ImportRefused(f"{path}: cannot open it as a SQLite database ({exc})") from None
    conn.row_factory = sqlite3.Row
    try:
        # One snapshot for the whole import, even while LLMKit keeps writing.
        conn.execute("BEGIN")
        tables = {r[0]: r[1] for r in conn.execute("SELECT name, type FROM sqlite_master")}
        source = _read(conn, path, _columns(conn, tables))
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ImportRefused(f"{path} is not a SQLite database ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return source


def _columns(conn: sqlite3.Connection, tables: dict[str, str]) -> dict[str, set[str]]:
    return {
        name: {str(r[1]) for r in conn.execute(f'PRAGMA table_info("{name}")')}
        for name, kind in tables.items()
        if kind == "table"
    }


def _check_schema(path: Path, columns: dict[str, set[str]]) -> str:
    """The schema's name, or ImportRefused naming what is missing."""
    if not any(table in columns for table in REQUIRED):
        if any(table in columns for table in LLMKIT_OWN_TABLES):
            raise ImportRefused(
                f"{path} is llmkit's own database, not LLMKit's; give the llmkit.db of the"
                " LLMKit (Rust) server"
            )
        raise ImportRefused(
            f"{path} is not an LLMKit database: it has none of LLMKit's tables"
            f" ({', '.join(REQUIRED)})"
        )
    problems = []
    for table, needed in REQUIRED.items():
        if table not in columns:
            problems.append(f"no {table} table")
            continue
        missing = [c for c in needed if c not in columns[table]]
        if missing:
            problems.append(f"{table} has no {', '.join(missing)}")
    for table, needed in OPTIONAL.items():
        missing = [c for c in needed if table in columns and c not in columns[table]]
        if missing:
            problems.append(f"{table} has no {', '.join(missing)}")
    evals = columns.get("prompt_eval")
    if evals is not None and "input_data" not in evals and "user_prompt_input" not in evals:
        problems.append("prompt_eval has neither input_data nor user_prompt_input")
    if problems:
        raise ImportRefused(
            f"{path} has an LLMKit schema this import does not know ({'; '.join(problems)});"
            f" it reads the schemas of LLMKit {SCHEMA_SEED} and {SCHEMA_LATEST}"
        )
    latest = (
        "user_prompt_input" in (evals or ())
        or {"reasoning_effort", "json_schema"} & columns["prompt_version"]
        or "tool" in columns
        or "provider_response_id" in columns.get("log", ())
    )
    return SCHEMA_LATEST if latest else SCHEMA_SEED


def _identity(conn: sqlite3.Connection, columns: dict[str, set[str]], path: Path) -> str:
    """Who this database is, from facts fixed when it was created, so a copy or a moved file
    is the same source and nothing is imported twice. sqlx records each migration with its
    install time and run time in nanoseconds; a database made without sqlx falls back to when
    its providers were seeded, and one without either to its path."""
    facts: list[str] = []
    if "_sqlx_migrations" in columns and {"version", "installed_on"} <= columns["_sqlx_migrations"]:
        wanted = "version, installed_on" + (
            ", execution_time" if "execution_time" in columns["_sqlx_migrations"] else ""
        )
        row = conn.execute(
            f"SELECT {wanted} FROM _sqlx_migrations ORDER BY version LIMIT 1"
        ).fetchone()
        if row is not None:
            facts.append("sqlx:" + ":".join(str(v) for v in row))
    if not facts and "created_at" in columns["provider"]:
        row = conn.execute("SELECT MIN(created_at) FROM provider").fetchone()
        if row is not None and row[0] is not None:
            facts.append(f"provider:{row[0]}")
    if not facts:
        facts.append(f"path:{path.resolve()}")
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def _read(conn: sqlite3.Connection, path: Path, columns: dict[str, set[str]]) -> LLMKitSource:
    schema = _check_schema(path, columns)
    identity = _identity(conn, columns, path)
    source = LLMKitSource(path=path, identity=identity, schema=schema, conn=conn)
    has_base = "base_url" in columns["provider"]
    providers = {
        int(r["id"]): (_text(r["name"]), _text_or_none(r["base_url"]) if has_base else None)
        for r in conn.execute(f"SELECT id, name{', base_url' if has_base else ''} FROM provider")
    }
    for r in conn.execute("SELECT id, provider_id, name FROM model"):
        provider, base_url = providers.get(int(r["provider_id"]), ("unknown", None))
        model_id = int(r["id"])
        source.models[model_id] = SourceModel(model_id, _text(r["name"]), provider, base_url)
    for r in conn.execute("SELECT id, key, current_prompt_version_id FROM prompt"):
        source.prompts[int(r["id"])] = SourcePrompt(
            int(r["id"]), _text(r["key"]), _int_or_none(r["current_prompt_version_id"])
        )
    source.versions = _read_versions(conn, columns)
    if "prompt_eval" in columns:
        source.evals = _read_evals(conn, columns["prompt_eval"])
    if "prompt_eval_run" in columns:
        source.eval_runs = [
            SourceEvalRun(
                id=int(r["id"]),
                run_id=_text(r["run_id"]),
                version_id=int(r["prompt_version_id"]),
                eval_id=int(r["prompt_eval_id"]),
                score=_int_or_none(r["score"]),
                output=_text(r["output"]),
                created_at=parse_time(r["created_at"]),
            )
            for r in conn.execute(
                "SELECT id, run_id, prompt_version_id, prompt_eval_id, score, output, created_at"
                " FROM prompt_eval_run ORDER BY id"
            )
        ]
    if "api_key" in columns:
        source.keys = [
            SourceKey(int(r["id"]), _text(r["name"]), _text(r["created_at"]))
            for r in conn.execute("SELECT id, name, created_at FROM api_key ORDER BY id")
        ]
    if "log" in columns:
        wanted = [*OPTIONAL["log"]]
        wanted += [c for c in ("reasoning_tokens", "provider_response_id") if c in columns["log"]]
        source.log_columns = tuple(wanted)
    return source


def _read_versions(conn: sqlite3.Connection, columns: dict[str, set[str]]) -> list[SourceVersion]:
    present = columns["prompt_version"]
    extra = [c for c in ("json_schema", "reasoning_effort") if c in present]
    tools: dict[int, list[dict[str, Any]]] = {}
    if "tool" in columns and "prompt_version_tool_access" in columns:
        rows = conn.execute(
            "SELECT a.prompt_version_id, t.tool_name, t.description, t.parameters, t.strict"
            " FROM prompt_version_tool_access a JOIN tool t ON t.id = a.tool_id"
            " ORDER BY a.prompt_version_id, t.id"
        )
        for r in rows:
            tools.setdefault(int(r[0]), []).append(_tool(r))
    versions = []
    query = (
        "SELECT id, prompt_id, version_number, system, user, model_id, max_tokens, temperature,"
        f" json_mode, prompt_type, is_chat, created_at{''.join(', ' + c for c in extra)}"
        " FROM prompt_version ORDER BY id"
    )
    for r in conn.execute(query):
        versions.append(
            SourceVersion(
                id=int(r["id"]),
                prompt_id=int(r["prompt_id"]),
                number=int(r["version_number"]),
                system=_text(r["system"], "surrogateescape"),
                user=_text(r["user"], "surrogateescape"),
                model_id=int(r["model_id"]),
                max_tokens=r["max_tokens"],
                temperature=r["temperature"],
                json_mode=_bool(r["json_mode"]),
                prompt_type=_text(r["prompt_type"]),
                is_chat=_bool(r["is_chat"]),
                created_at=parse_time(r["created_at"]),
                created_text=_text(r["created_at"]),
                json_schema=_text_or_none(_get(r, "json_schema")),
                reasoning_effort=_text_or_none(_get(r, "reasoning_effort")),
                tools=tuple(tools.get(int(r["id"]), ())),
            )
        )
    return versions


def _tool(row: sqlite3.Row) -> dict[str, Any]:
    """An LLMKit tool row as an OpenAI function tool."""
    try:
        parameters = json.loads(_text(row[3]))
    except ValueError:
        parameters = {"type": "object", "properties": {}}
    function: dict[str, Any] = {"name": _text(row[1]), "description": _text(row[2])}
    function["parameters"] = parameters
    function["strict"] = _bool(row[4])
    return {"type": "function", "function": function}


def _read_evals(conn: sqlite3.Connection, present: set[str]) -> list[SourceEval]:
    optional = ("evaluation_type", "input_data", "system_prompt_input", "user_prompt_input")
    extra = [c for c in optional if c in present]
    rows = conn.execute(
        f"SELECT id, prompt_id, name{''.join(', ' + c for c in extra)} FROM prompt_eval ORDER BY id"
    )
    return [
        SourceEval(
            id=int(r["id"]),
            prompt_id=int(r["prompt_id"]),
            name=_text(r["name"]),
            evaluation_type=_text_or_none(_get(r, "evaluation_type")),
            input_data=_text_or_none(_get(r, "input_data")),
            system_input=_text_or_none(_get(r, "system_prompt_input")),
            user_input=_text_or_none(_get(r, "user_prompt_input")),
        )
        for r in rows
    ]


def _get(row: sqlite3.Row, name: str) -> Any:
    return row[name] if name in row.keys() else None  # noqa: SIM118 (`in row` reads values)


def _text(value: Any, errors: str = "replace") -> str:
    """A column as text. Prompt text keeps undecodable bytes (surrogateescape) so that the
    import can refuse that version by name instead of writing replacement characters."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors)
    return str(value)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t", "yes")
    return bool(value)

"""`llmkit import-llmkit`: LLMKit databases built from LLMKit's own migrations (both schemas),
imported into real prompt repositories, and read back through the CLI, the API, the run log and
the eval records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmkit.evals.records import EvalRecords
from llmkit.evals.spec import load_evals
from llmkit.import_convert import AliasFile, model_target
from llmkit.import_land import FAULT_ENV, ROW_STEPS, STEPS
from llmkit.import_source import SourceModel
from llmkit.promptfile import parse
from tests.api_fixtures import repo_state, running_api, scaffold_repo
from tests.helpers import git, init_repo, invoke, opened_workspace, run_llmkit
from tests.pg import PgServer

# LLMKit's migrations sit beside the checkout (`../shared/reference`), as the project's other
# reference material does; LLMKIT_REFERENCE_DIR points elsewhere.
REFERENCE = Path(
    os.environ.get("LLMKIT_REFERENCE_DIR")
    or next(
        (
            str(base / "shared" / "reference")
            for base in Path(__file__).resolve().parents
            if (base / "shared" / "reference").is_dir()
        ),
        "/work/shared/reference",
    )
)
SCHEMAS = ("7ae6621", "5f5efba")

pytestmark = pytest.mark.skipif(
    not (REFERENCE / "llmkit-migrations-7ae6621").is_dir(),
    reason=f"LLMKit's migrations are not at {REFERENCE} (set LLMKIT_REFERENCE_DIR)",
)

PROXY = "https://proxy.example.test/v1"
AZURE = (
    "https://my-resource.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions"
    "?api-version=2024-06-01"
)
# What a version row holds unless a test says otherwise: a small static completion prompt.
PLAIN_VERSION: dict[str, Any] = dict(
    user="", max_tokens=10, temperature=0.1, json_mode=0, prompt_type="static", is_chat=0
)


def day(n: int, hour: int = 10) -> str:
    """LLMKit's created_at text: `YYYY-MM-DD HH:MM:SS`, UTC."""
    return f"2025-01-{n:02d} {hour:02d}:00:00"


def iso(n: int, hour: int = 10) -> str:
    return f"2025-01-{n:02d}T{hour:02d}:00:00Z"


# --- LLMKit databases -------------------------------------------------------------------------


class LLMKitDb:
    """An LLMKit database made as sqlx makes one: each migration file in name order, recorded
    in `_sqlx_migrations`; then rows as LLMKit's server would write them."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self.schema = schema
        self.conn = sqlite3.connect(path, isolation_level=None)
        # A stand-in made for one test: no fsync at each of its hundreds of commits.
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT"
            " NULL, installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN"
            " NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)"
        )
        for sql_file in sorted((REFERENCE / f"llmkit-migrations-{schema}").glob("*.sql")):
            sql = sql_file.read_text("utf-8")
            started = time.perf_counter_ns()
            self.conn.executescript(sql)
            version, _, description = sql_file.stem.partition("_")
            self.conn.execute(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum,"
                " execution_time) VALUES (?, ?, 1, ?, ?)",
                (
                    int(version),
                    description.replace("_", " "),
                    hashlib.sha384(sql.encode()).digest(),
                    time.perf_counter_ns() - started,
                ),
            )

    @property
    def latest(self) -> bool:
        return self.schema == "5f5efba"

    def insert(self, table: str, **values: Any) -> int:
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cursor = self.conn.execute(
            f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values())
        )
        return int(cursor.lastrowid or 0)

    def provider(self, name: str, base_url: str | None = None) -> int:
        row = self.conn.execute("SELECT id FROM provider WHERE name = ?", (name,)).fetchone()
        if row:
            if base_url is not None:
                self.conn.execute(
                    "UPDATE provider SET base_url = ? WHERE id = ?", (base_url, row[0])
                )
            return int(row[0])
        # LLMKit's latest schema seeds no anthropic provider: add it as LLMKit's seed has it.
        return self.insert("provider", name=name, base_url=base_url or f"https://api.{name}.com/v1")

    def model(self, provider: str, name: str, base_url: str | None = None) -> int:
        provider_id = self.provider(provider, base_url)
        row = self.conn.execute(
            "SELECT id FROM model WHERE provider_id = ? AND name = ?", (provider_id, name)
        ).fetchone()
        return int(row[0]) if row else self.insert("model", provider_id=provider_id, name=name)

    def prompt(self, key: str) -> int:
        return self.insert("prompt", key=key)

    def version(self, prompt_id: int, number: int, created_at: str, **fields: Any) -> int:
        """A prompt_version row: `fields` over PLAIN_VERSION's settings."""
        return self.insert(
            "prompt_version",
            prompt_id=prompt_id,
            version_number=number,
            created_at=created_at,
            updated_at=created_at,
            **{**PLAIN_VERSION, **fields},
        )

    def set_current(self, prompt_id: int, version_id: int) -> None:
        self.conn.execute(
            "UPDATE prompt SET current_prompt_version_id = ? WHERE id = ?", (version_id, prompt_id)
        )

    def eval_case(self, prompt_id: int, name: str, system: dict[str, Any], user: Any = None) -> int:
        """The seed keeps one JSON object of variables; the latest splits system and user."""
        if self.latest:
            user_input = json.dumps(user) if isinstance(user, dict) else (user or "")
            return self.insert(
                "prompt_eval",
                prompt_id=prompt_id,
                name=name,
                system_prompt_input=json.dumps(system),
                user_prompt_input=user_input,
            )
        data = {**system, **(user if isinstance(user, dict) else {})}
        return self.insert(
            "prompt_eval", prompt_id=prompt_id, name=name, input_data=json.dumps(data)
        )

    def eval_run(
        self,
        run_id: str,
        version_id: int,
        eval_id: int,
        score: int | None,
        output: str,
        created_at: str,
    ) -> int:
        return self.insert(
            "prompt_eval_run",
            run_id=run_id,
            prompt_version_id=version_id,
            prompt_eval_id=eval_id,
            score=score,
            output=output,
            created_at=created_at,
            updated_at=created_at,
        )

    def log(
        self,
        prompt_id: int | None,
        model_id: int,
        status: int,
        request: Any,
        response: Any,
        created_at: str,
        tokens: tuple[int, int] = (0, 0),
    ) -> int:
        fields: dict[str, Any] = dict(
            prompt_id=prompt_id,
            model_id=model_id,
            status_code=status,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            reasoning_tokens=0,
            request_body=json.dumps(request),
            response_data=json.dumps(response),
            created_at=created_at,
        )
        if self.latest:
            fields["provider_response_id"] = f"resp-{created_at}"
        return self.insert("log", **fields)

    def api_key(self, name: str, created_at: str) -> None:
        digest = hashlib.sha256(name.encode()).hexdigest()
        self.insert(
            "api_key", name=name, key_hash=digest, created_at=created_at, updated_at=created_at
        )


SUPPORT = [
    "You are a support bot.",
    "You are a friendly support bot for {{ company }}.",
    "You are a terse support bot for {{ company }}.",
]


@dataclass
class Scenario:
    db: LLMKitDb
    ids: dict[str, int] = field(default_factory=dict)

    def support_version(
        self, number: int, created_at: str, system: str, prompt_type: str = "dynamic_system"
    ) -> int:
        """A support-bot version with the settings all of its versions share."""
        return self.db.version(
            self.ids["support"],
            number,
            created_at,
            system=system,
            model_id=self.ids["gpt"],
            max_tokens=512,
            temperature=0.5,
            prompt_type=prompt_type,
            is_chat=1,
        )


def build_scenario(path: Path, schema: str) -> Scenario:
    """Three prompts of ours beside LLMKit's five samples: a chat prompt whose current version
    is not its latest, a json-mode dynamic_both prompt, a prompt on an Azure resource; the
    openai provider behind a proxy; eval cases, scored runs, logs and API keys."""
    db = LLMKitDb(path, schema)
    s = Scenario(db)
    gpt = db.model("openai", "gpt-4o-mini", base_url=PROXY)
    claude = db.model("anthropic", "claude-3-5-haiku-latest")
    azure = db.model("azure", "gpt-4o-mini", base_url=AZURE)
    s.ids.update(gpt=gpt, claude=claude, azure=azure)

    support = s.ids["support"] = db.prompt("support-bot")
    for n, (text, when) in enumerate(zip(SUPPORT, (day(1), day(3), day(5))), 1):
        kind = "static" if n == 1 else "dynamic_system"
        s.ids[f"support_v{n}"] = s.support_version(n, when, text, kind)
    db.set_current(support, s.ids["support_v2"])

    invoice = s.ids["invoice"] = db.prompt("extract/invoice")
    common = dict(
        system="Extract the invoice fields as JSON.",
        user="Invoice:\n{{ invoice }}",
        model_id=claude,
        max_tokens=1024,
        json_mode=1,
        prompt_type="dynamic_both",
        is_chat=0,
    )
    s.ids["invoice_v1"] = db.version(invoice, 1, day(2), temperature=0.2, **common)
    extra: dict[str, Any] = {}
    if db.latest:
        extra = dict(
            reasoning_effort="low",
            json_schema=json.dumps({"type": "object", "properties": {"total": {"type": "number"}}}),
        )
    s.ids["invoice_v2"] = db.version(invoice, 2, day(4), temperature=0.0, **common, **extra)
    if db.latest:
        db.insert("prompt_version_tool_access", prompt_version_id=s.ids["invoice_v2"], tool_id=1)
    db.set_current(invoice, s.ids["invoice_v2"])

    reviewer = s.ids["reviewer"] = db.prompt("reviewer")
    s.ids["reviewer_v1"] = db.version(
        reviewer,
        1,
        day(6),
        system="Review {{ language }} code.",
        user="{{ code }}",
        model_id=azure,
        max_tokens=800,
        temperature=0.3,
        json_mode=0,
        prompt_type="dynamic_both",
        is_chat=0,
    )
    db.set_current(reviewer, s.ids["reviewer_v1"])

    s.ids["acme"] = db.eval_case(support, "Acme greeting", {"company": "Acme"}, "Hello there")
    s.ids["plain"] = db.eval_case(support, "Plain question", {"company": "Initech"})
    s.ids["loop"] = db.eval_case(
        reviewer, "python loop", {"language": "python"}, {"code": "for i in x: pass"}
    )
    db.eval_run("run-a", s.ids["support_v1"], s.ids["acme"], 4, "Hi from Acme", day(2, 11))
    db.eval_run("run-a", s.ids["support_v1"], s.ids["plain"], None, "Hello", day(2, 11))
    db.eval_run("run-b", s.ids["support_v3"], s.ids["acme"], 5, "Hi.", day(5, 12))
    db.eval_run("run-b", s.ids["support_v3"], s.ids["acme"], 3, "Hello.", day(5, 12))
    db.eval_run("run-c", s.ids["reviewer_v1"], s.ids["loop"], 2, "Looks fine", day(6, 12))

    answer = {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    system_v1 = {"role": "system", "content": SUPPORT[0]}
    s.ids["log_early"] = db.log(
        support,
        gpt,
        200,
        {"messages": [system_v1, {"role": "user", "content": "hi"}]},
        answer,
        day(2),
        (10, 5),
    )
    # After version 2 was made, but its request shows the first version's text.
    s.ids["log_matched"] = db.log(
        support, gpt, 200, {"messages": [system_v1], "stream": True}, answer, day(4), (7, 3)
    )
    s.ids["log_error"] = db.log(
        reviewer, azure, 500, {"messages": []}, {"error": {"message": "upstream down"}}, day(6, 13)
    )
    db.api_key("production", day(1))
    db.api_key("staging", day(2))
    return s


# --- helpers -------------------------------------------------------------------------------------


def do_import(
    repo: Path, db: Path, *extra: str, env: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    result = invoke("import-llmkit", db, "--repo", repo, "--json", *extra, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def history(repo: Path, key: str) -> list[dict[str, Any]]:
    result = invoke("history", key, "--repo", repo, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD"))


def table_counts(repo: Path) -> dict[str, int]:
    conn = sqlite3.connect(repo / ".llmkit" / "llmkit.db")
    try:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("run_log", "eval_runs", "eval_results", "import_llmkit")
        }
    finally:
        conn.close()


def assert_sound(repo: Path) -> None:
    """git fsck finds nothing broken or missing."""
    fsck = git(repo, "fsck", "--no-progress")
    assert "error" not in fsck.lower() and "missing" not in fsck.lower(), fsck


def assert_clean(repo: Path) -> None:
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert_sound(repo)


@pytest.fixture(params=SCHEMAS)
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    s = build_scenario(tmp_path / f"llmkit-{request.param}.db", request.param)
    yield s
    s.db.conn.close()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A prompt repository made by `llmkit init`."""
    return scaffold_repo(tmp_path / "repo")


@pytest.fixture
def imported(scenario: Scenario, target: Path) -> tuple[Scenario, Path, dict[str, Any]]:
    summary = do_import(target, scenario.db.path)
    return scenario, target, summary


# --- the import ---------------------------------------------------------------------------------


def test_history_has_one_commit_per_version_dated_as_in_llmkit(imported: Any) -> None:
    scenario, repo, summary = imported
    assert summary["schema"] == scenario.db.schema
    assert summary["versions"] == 3 + 2 + 1 + 5  # ours and LLMKit's five samples
    assert summary["restores"] == ["support-bot@2"]
    rows = history(repo, "support-bot")
    assert [r["number"] for r in rows] == [1, 2, 3, 4]
    assert [r["date"] for r in rows[:3]] == [iso(1), iso(3), iso(5)]
    assert [r["message"].splitlines()[0] for r in rows] == [
        "Import support-bot version 1 from LLMKit",
        "Import support-bot version 2 from LLMKit",
        "Import support-bot version 3 from LLMKit",
        "Restore support-bot to version 2 (current in LLMKit)",
    ]
    # Across prompts, commits are in created_at order: support v1 (day 1), invoice v1 (day 2)...
    subjects = git(repo, "log", "--reverse", "--format=%s").splitlines()
    assert subjects[1:7] == [
        "Import model aliases from LLMKit",
        "Import support-bot version 1 from LLMKit",
        "Import extract/invoice version 1 from LLMKit",
        "Import support-bot version 2 from LLMKit",
        "Import extract/invoice version 2 from LLMKit",
        "Import support-bot version 3 from LLMKit",
    ]
    committer_date = git(repo, "log", "-1", "--format=%cI", rows[0]["sha"])
    assert committer_date.startswith("2025-01-01T10:00:00")
    # What LLMKit served (version 2) is what is served now.
    served = parse((repo / "prompts/support-bot.md").read_text("utf-8"))
    assert served.system == SUPPORT[1]
    assert_clean(repo)


def test_prompt_files_carry_the_rows_settings(imported: Any) -> None:
    scenario, repo, summary = imported
    support = parse((repo / "prompts/support-bot.md").read_text("utf-8"))
    assert support.meta == {
        "model": "openai-gpt-4o-mini",
        "temperature": 0.5,
        "max_tokens": 512,
        "chat": True,
    }
    invoice = parse((repo / "prompts/extract/invoice.md").read_text("utf-8"))
    assert invoice.model == "anthropic/claude-3-5-haiku-latest"
    assert invoice.json_mode and invoice.prompt_type == "dynamic_both"
    assert invoice.system == "Extract the invoice fields as JSON."
    assert invoice.user == "Invoice:\n{{ invoice }}"
    assert "type" not in invoice.meta  # derived as dynamic_both already
    if scenario.db.latest:
        assert invoice.meta["reasoning_effort"] == "low"
        assert invoice.meta["json_schema"] == {
            "type": "object",
            "properties": {"total": {"type": "number"}},
        }
        [tool] = invoice.meta["tools"]
        assert tool["function"]["name"] == "getWeather"
        assert tool["function"]["parameters"]["required"] == ["location"]
    # The first support-bot version was static with no template syntax: no `type:` either.
    first = history(repo, "support-bot")[0]
    assert "type:" not in git(repo, "show", f"{first['sha']}:prompts/support-bot.md")
    # Aliases for the proxied and Azure models; the scaffold's alias and comments kept.
    config_text = (repo / "llmkit.yaml").read_text("utf-8")
    assert config_text.startswith("# Model aliases for prompts' `model:` field.")
    models = yaml.safe_load(config_text)["models"]
    assert models["default"] == {"model": "echo"}
    assert models["openai-gpt-4o-mini"] == {"model": "openai/gpt-4o-mini", "api_base": PROXY}
    assert models["azure-gpt-4o-mini"] == {
        "model": "azure/gpt-4o-mini",
        "api_base": "https://my-resource.openai.azure.com",
        "api_version": "2024-06-01",
    }
    assert (
        summary["aliases"]["azure-gpt-4o-mini"]["api_base"]
        == "https://my-resource.openai.azure.com"
    )
    reviewer = parse((repo / "prompts/reviewer.md").read_text("utf-8"))
    assert reviewer.model == "azure-gpt-4o-mini"


def test_api_versions_and_diffs_match_the_rows(imported: Any) -> None:
    _scenario, repo, _ = imported
    with running_api(repo) as api:
        versions = api.get("/v1/ui/prompts/support-bot/versions").json()
        assert [v["system"] for v in versions] == [*SUPPORT, SUPPORT[1]]
        assert [v["date"] for v in versions[:3]] == [iso(1), iso(3), iso(5)]
        assert all(v["is_chat"] and v["user"] == "" for v in versions)
        assert [v["prompt_type"] for v in versions] == ["static", *["dynamic_system"] * 3]
        assert f"-{SUPPORT[0]}" in versions[1]["system_version_diff"]
        assert f"+{SUPPORT[1]}" in versions[1]["system_version_diff"]
        diff = api.get("/v1/ui/prompts/support-bot/diff", params={"from": "1", "to": "3"}).json()
        assert f"-{SUPPORT[0]}" in diff["diff"] and f"+{SUPPORT[2]}" in diff["diff"]
        detail = api.get("/v1/ui/prompts/extract/invoice").json()
        assert detail["json_mode"] is True and detail["version_number"] == 2
        assert detail["temperature"] == 0.0 and detail["max_tokens"] == 1024
        keys = {m["id"] for m in api.get("/v1/models", headers=api.run).json()["data"]}
        assert {"support-bot", "extract/invoice", "reviewer", "STATIC-SYSTEM-CHAT"} <= keys


def test_eval_cases_become_files(imported: Any) -> None:
    scenario, repo, summary = imported
    assert summary["eval_cases"] == 3
    cases, problems = load_evals(repo)
    assert not [p for p in problems if p.severity == "error"], problems
    by_name = {c.name: c for c in cases}
    acme = by_name["Acme greeting"]
    assert acme.file == "evals/support-bot/acme-greeting.yaml"
    assert acme.vars == {"company": "Acme"}
    loop = by_name["python loop"]
    assert loop.prompt_key == "reviewer"
    if scenario.db.latest:
        assert acme.messages == [{"role": "user", "content": "Hello there"}]
        assert loop.vars == {"language": "python"} and loop.user_vars == {
            "code": "for i in x: pass"
        }
    else:
        assert loop.vars == {"language": "python", "code": "for i in x: pass"}
    subject = git(repo, "log", "-1", "--format=%s")
    assert subject == "Import 3 eval cases from LLMKit"


def test_eval_runs_and_scores_are_durable_records(imported: Any) -> None:
    _scenario, repo, summary = imported
    assert (summary["eval_runs"], summary["eval_results"], summary["scores"]) == (3, 5, 4)
    shas = {r["number"]: r["sha"] for r in history(repo, "support-bot")}
    with opened_workspace(repo) as ws:
        rows = EvalRecords(ws.db).results(prompt_key="support-bot")
        got = [
            (
                r["case_name"],
                r["version_number"],
                r["version_sha"],
                r["human_score"],
                r["repeat_index"],
                r["output"],
            )
            for r in rows
        ]
        assert got == [
            ("Acme greeting", 1, shas[1], 4, 0, "Hi from Acme"),
            ("Plain question", 1, shas[1], None, 0, "Hello"),
            ("Acme greeting", 3, shas[3], 5, 0, "Hi."),
            ("Acme greeting", 3, shas[3], 3, 1, "Hello."),
        ]
        assert rows[0]["file"] == "evals/support-bot/acme-greeting.yaml"
        assert rows[0]["created_at"] == "2025-01-02T11:00:00.000Z"
        assert rows[0]["run_id"] == "run-a"
    with running_api(repo) as api:
        v3 = api.get("/v1/ui/prompts/support-bot/versions/3").json()["version_id"]
        listed = api.get(f"/v1/ui/prompt-eval-runs/support-bot/version/{v3}").json()
        assert sorted(r["score"] for r in listed) == [3, 5]
        performance = api.get("/v1/ui/prompts/support-bot/performance").json()
        scored = {(p["version_number"], p["avg_score"]) for p in performance if p["run_count"]}
        assert scored == {(1, 4.0), (3, 4.0)}


def test_logs_go_into_the_run_log(imported: Any) -> None:
    _scenario, repo, summary = imported
    assert summary["logs"] == 3
    shas = {r["number"]: r["sha"] for r in history(repo, "support-bot")}
    with opened_workspace(repo) as ws:
        support = sorted(ws.runlog.list(prompt="support-bot"), key=lambda r: r["created_at"])
        assert [(r["created_at"], r["version_number"], r["version_sha"]) for r in support] == [
            ("2025-01-02T10:00:00.000Z", 1, shas[1]),
            # made after version 2, but its request holds version 1's text
            ("2025-01-04T10:00:00.000Z", 1, shas[1]),
        ]
        first = support[0]
        assert first["status"] == "ok" and first["http_status"] == 200 and first["source"] == "api"
        assert (first["input_tokens"], first["output_tokens"]) == (10, 5)
        assert first["model"] == "openai/gpt-4o-mini"
        assert first["request"]["messages"][0]["content"] == SUPPORT[0]
        assert first["response"]["choices"][0]["message"]["content"] == "hi"
        assert support[1]["stream"] is True
        [error] = ws.runlog.list(prompt="reviewer")
        assert error["status"] == "error" and error["error"] == "upstream down"
        assert error["http_status"] == 500 and error["version_number"] == 1
        assert error["model"] == "azure/gpt-4o-mini"


def test_summary_lists_keys_to_recreate(scenario: Scenario, target: Path) -> None:
    result = invoke("import-llmkit", scenario.db.path, "--repo", target)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "re-create these" in text
    assert f"production (created {day(1)})" in text and f"staging (created {day(2)})" in text
    assert "alias        openai-gpt-4o-mini -> openai/gpt-4o-mini at " + PROXY in text
    assert "eval runs    3 (5 results, 4 human scores)" in text


def test_a_second_import_adds_nothing(imported: Any) -> None:
    scenario, repo, _ = imported
    head, counts = git(repo, "rev-parse", "HEAD"), table_counts(repo)
    again = do_import(repo, scenario.db.path)
    assert again["commits"] == [] and again["versions"] == 0 and again["restores"] == []
    assert (again["eval_cases"], again["eval_results"], again["logs"]) == (0, 0, 0)
    assert git(repo, "rev-parse", "HEAD") == head
    assert table_counts(repo) == counts
    # A copy of the database elsewhere is the same source.
    copy = scenario.db.path.parent / "elsewhere" / "copy.db"
    copy.parent.mkdir()
    shutil.copy(scenario.db.path, copy)
    assert do_import(repo, copy)["commits"] == []
    assert git(repo, "rev-parse", "HEAD") == head and table_counts(repo) == counts
    text = invoke("import-llmkit", scenario.db.path, "--repo", repo).stdout
    assert "Nothing new to import" in text
    assert_clean(repo)


def test_dry_run_changes_nothing_and_reports_what_the_import_does(
    scenario: Scenario, target: Path
) -> None:
    before = repo_state(target)
    preview = do_import(target, scenario.db.path, "--dry-run")
    assert preview["dry_run"] is True and preview["commits"] == []
    assert repo_state(target) == before
    assert not (target / ".llmkit" / "llmkit.db").exists()
    text = invoke("import-llmkit", scenario.db.path, "--repo", target, "--dry-run").stdout
    assert text.startswith("Dry run: nothing was changed.")
    real = do_import(target, scenario.db.path)
    for field_name in (
        "prompts",
        "versions",
        "restores",
        "eval_cases",
        "eval_runs",
        "eval_results",
        "scores",
        "logs",
        "aliases",
    ):
        assert preview[field_name] == real[field_name], field_name
    # A dry run after an import also changes nothing, rows included.
    head, counts = git(target, "rev-parse", "HEAD"), table_counts(target)
    assert do_import(target, scenario.db.path, "--dry-run")["versions"] == 0
    assert git(target, "rev-parse", "HEAD") == head and table_counts(target) == counts


def test_new_rows_in_llmkit_are_imported_by_a_rerun(imported: Any) -> None:
    scenario, repo, _ = imported
    db, ids = scenario.db, scenario.ids
    v4 = scenario.support_version(4, day(20), "You are a support bot for {{ company }}. Be brief.")
    db.set_current(ids["support"], v4)
    db.eval_run("run-d", v4, ids["acme"], 5, "Hi!", day(20, 11))
    db.log(ids["support"], ids["gpt"], 200, {"messages": []}, {"choices": []}, day(21))
    counts = table_counts(repo)
    summary = do_import(repo, db.path)
    assert summary["versions"] == 1 and summary["restores"] == []
    assert (summary["eval_results"], summary["logs"], summary["eval_cases"]) == (1, 1, 0)
    rows = history(repo, "support-bot")
    assert [r["number"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["message"].startswith("Import support-bot version 4 from LLMKit")
    assert rows[-1]["date"] == iso(20)
    after = table_counts(repo)
    assert after["run_log"] == counts["run_log"] + 1
    assert after["eval_results"] == counts["eval_results"] + 1
    with opened_workspace(repo) as ws:
        [newest] = ws.runlog.list(prompt="support-bot", page_size=1)
        assert newest["version_number"] == 5 and newest["version_sha"] == rows[-1]["sha"]
    assert_clean(repo)


def test_llmkit_setting_an_older_version_current_is_restored(imported: Any) -> None:
    scenario, repo, _ = imported
    scenario.db.set_current(scenario.ids["invoice"], scenario.ids["invoice_v1"])
    summary = do_import(repo, scenario.db.path)
    assert summary["restores"] == ["extract/invoice@1"] and summary["versions"] == 0
    served = parse((repo / "prompts/extract/invoice.md").read_text("utf-8"))
    assert served.meta["temperature"] == 0.2
    assert do_import(repo, scenario.db.path)["commits"] == []


def test_edits_made_in_llmkit_after_the_import_are_not_overwritten_by_a_restore(
    imported: Any,
) -> None:
    scenario, repo, _ = imported
    path = repo / "prompts/reviewer.md"
    path.write_text(path.read_text("utf-8").replace("Review", "Carefully review"), "utf-8")
    git(repo, "commit", "-qam", "Sharper reviewer")
    head = git(repo, "rev-parse", "HEAD")
    summary = do_import(repo, scenario.db.path)
    assert summary["commits"] == []
    assert git(repo, "rev-parse", "HEAD") == head


def test_a_prompt_file_with_uncommitted_edits_stops_the_import(imported: Any) -> None:
    scenario, repo, _ = imported
    db = scenario.db
    scenario.support_version(4, day(20), "Version four.", prompt_type="static")
    (repo / "prompts/support-bot.md").write_text("my own edit\n", "utf-8")
    before, counts = repo_state(repo), table_counts(repo)
    result = invoke("import-llmkit", db.path, "--repo", repo)
    assert result.exit_code == 2
    assert "prompts/support-bot.md has uncommitted changes" in result.stderr
    assert "nothing was imported" in result.stderr
    assert repo_state(repo) == before and table_counts(repo) == counts
    # Staged edits stop it too.
    git(repo, "add", "prompts/support-bot.md")
    result = invoke("import-llmkit", db.path, "--repo", repo)
    assert result.exit_code == 2 and "prompts/support-bot.md" in result.stderr


# --- bad input ---------------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_exits_2(tmp_path: Path, target: Path) -> None:
    before = repo_state(target)
    text_file = tmp_path / "notes.db"
    text_file.write_text("these are not the rows you are looking for\n" * 50, "utf-8")
    result = invoke("import-llmkit", text_file, "--repo", target)
    assert result.exit_code == 2
    assert "is not a SQLite database" in result.stderr
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.close()
    result = invoke("import-llmkit", empty, "--repo", target)
    assert result.exit_code == 2 and "is not an LLMKit database" in result.stderr
    result = invoke("import-llmkit", tmp_path / "missing.db", "--repo", target)
    assert result.exit_code == 2 and "no such file" in result.stderr
    assert repo_state(target) == before
    assert not (target / ".llmkit" / "llmkit.db").exists()


def test_an_unknown_schema_exits_2(tmp_path: Path, target: Path) -> None:
    path = tmp_path / "odd.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE provider (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE model (id INTEGER PRIMARY KEY, provider_id INTEGER, name TEXT);"
        "CREATE TABLE prompt (id INTEGER PRIMARY KEY, key TEXT);"
    )
    conn.close()
    result = invoke("import-llmkit", path, "--repo", target)
    assert result.exit_code == 2
    assert "schema this import does not know" in result.stderr
    assert (
        "no prompt_version table" in result.stderr and "current_prompt_version_id" in result.stderr
    )


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_key_llmkit_cannot_use_exits_2_naming_it(
    tmp_path: Path, target: Path, schema: str
) -> None:
    s = build_scenario(tmp_path / "llmkit.db", schema)
    s.db.version(s.db.prompt("../escape"), 1, day(7), system="x", model_id=s.ids["gpt"])
    s.db.version(s.db.prompt("my prompt"), 1, day(7), system="y", model_id=s.ids["gpt"])
    s.db.conn.close()
    before = repo_state(target)
    result = invoke("import-llmkit", s.db.path, "--repo", target)
    assert result.exit_code == 2
    assert "'../escape'" in result.stderr and "'..' segment" in result.stderr
    assert "'my prompt'" in result.stderr
    assert "Rename these prompts in LLMKit" in result.stderr
    assert repo_state(target) == before
    assert not (target / "prompts" / "escape.md").exists()


def test_a_version_whose_text_cannot_be_written_exits_2(scenario: Scenario, target: Path) -> None:
    db, ids = scenario.db, scenario.ids
    db.version(
        ids["reviewer"], 2, day(8), system="Before\n<!-- role:user -->\nAfter", model_id=ids["gpt"]
    )
    before = repo_state(target)
    result = invoke("import-llmkit", db.path, "--repo", target)
    assert result.exit_code == 2
    assert "'reviewer' version 2" in result.stderr and "role marker" in result.stderr
    assert repo_state(target) == before


# --- recovery ----------------------------------------------------------------------------------


def test_files_that_already_hold_what_the_import_writes_are_its_own(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Files (and index entries) that already hold what the import writes, copied by hand or
    left by an earlier attempt, are not edits: the import takes them as its own."""
    done = scaffold_repo(tmp_path / "done")
    do_import(done, scenario.db.path)
    again = scaffold_repo(tmp_path / "again")
    for rel in (
        "prompts/support-bot.md",
        "prompts/reviewer.md",
        "llmkit.yaml",
        "evals/reviewer/python-loop.yaml",
    ):
        (again / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(done / rel, again / rel)
    git(again, "add", "prompts/reviewer.md", "llmkit.yaml")
    summary = do_import(again, scenario.db.path)
    assert summary["versions"] == 11
    assert_clean(again)


def test_rows_written_but_not_recorded_are_not_written_twice(imported: Any) -> None:
    """A kill between writing the logs and recording them: the trace ids say they are in."""
    scenario, repo, _ = imported
    counts = table_counts(repo)
    conn = sqlite3.connect(repo / ".llmkit" / "llmkit.db")
    conn.execute("DELETE FROM import_llmkit WHERE kind = 'log'")
    conn.commit()
    conn.close()
    do_import(repo, scenario.db.path)
    assert table_counts(repo) == counts


def test_two_llmkit_databases_into_one_repository(tmp_path: Path, target: Path) -> None:
    first = build_scenario(tmp_path / "one.db", "7ae6621")
    second = build_scenario(tmp_path / "two.db", "7ae6621")
    assert do_import(target, first.db.path)["versions"] == 11
    summary = do_import(target, second.db.path)
    assert summary["identity"] != do_import(target, first.db.path)["identity"]
    # The second database's versions have the same text: each is "the same file" as the one
    # before it, except where the first import's restore left another version served.
    assert summary["logs"] == 3
    assert do_import(target, second.db.path)["commits"] == []
    assert_clean(target)


# --- translations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "name", "base", "model", "alias"),
    [
        ("openai", "gpt-4o", "https://api.openai.com/v1", "openai/gpt-4o", None),
        ("openai", "gpt-4o", "https://api.openai.com/v1/", "openai/gpt-4o", None),
        (
            "openrouter",
            "google/gemini-2.0-flash-001",
            "https://openrouter.ai/api/v1",
            "openrouter/google/gemini-2.0-flash-001",
            None,
        ),
        (
            "anthropic",
            "claude-3-5-sonnet-latest",
            "https://api.anthropic.com/v1",
            "anthropic/claude-3-5-sonnet-latest",
            None,
        ),
        (
            "gemini",
            "gemini-1.5-pro",
            "https://generativelanguage.geminiapis.com/v1",
            "gemini/gemini-1.5-pro",
            None,
        ),
        (
            "deepseek",
            "deepseek-chat",
            "https://api.deepseek.com/v1",
            "deepseek/deepseek-chat",
            None,
        ),
        ("azure", "gpt-4o-mini", None, "azure/gpt-4o-mini", None),
        ("openai", "gpt-4o", PROXY, "openai/gpt-4o", {"model": "openai/gpt-4o", "api_base": PROXY}),
        (
            "azure",
            "DeepSeek-R1",
            "https://x.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview",
            "azure_ai/DeepSeek-R1",
            {
                "model": "azure_ai/DeepSeek-R1",
                "api_base": "https://x.services.ai.azure.com/models",
                "api_version": "2024-05-01-preview",
            },
        ),
    ],
)
def test_models_map_to_litellm_strings(
    provider: str, name: str, base: str | None, model: str, alias: dict[str, str] | None
) -> None:
    target = model_target(SourceModel(1, name, provider, base))
    assert (target.model, target.alias) == (model, alias)


def test_aliases_are_appended_without_touching_the_file() -> None:
    text = (
        "# mine\nmodels:\n    default:\n        model: echo   # offline\n\n"
        "    fast: openai/gpt-4o-mini\n"
    )
    aliases = AliasFile(text)
    assert aliases.name_for("fast", {"model": "openai/gpt-4o-mini"}) == "fast"  # reused
    assert aliases.name_for("default", {"model": "openai/gpt-4o", "api_base": PROXY}) == "default-2"
    new = aliases.new_text()
    assert new.startswith(text.rstrip("\n"))
    assert yaml.safe_load(new)["models"] == {
        "default": {"model": "echo"},
        "fast": "openai/gpt-4o-mini",
        "default-2": {"model": "openai/gpt-4o", "api_base": PROXY},
    }
    assert AliasFile(None).name_for("a", {"model": "m"}) == "a"
    flow = AliasFile("models: {default: echo}\n")
    flow.name_for("b", {"model": "m"})
    assert yaml.safe_load(flow.new_text())["models"] == {"default": "echo", "b": {"model": "m"}}


def test_a_branch_that_cannot_move_leaves_the_tree_and_index_as_they_were(
    scenario: Scenario, target: Path
) -> None:
    """Git refuses the branch update (here a reference-transaction hook, as when another
    writer moved it): files and index entries are put back, and nothing is recorded."""
    hooks = target.parent / "hooks"
    hooks.mkdir()
    hook = hooks / "reference-transaction"
    hook.write_text('#!/bin/sh\n[ "$1" = prepared ] && grep -q refs/heads/ && exit 1\nexit 0\n')
    hook.chmod(0o755)
    git(target, "config", "core.hooksPath", str(hooks))
    before = repo_state(target)
    staged_before = git(target, "ls-files", "-s")
    result = invoke("import-llmkit", scenario.db.path, "--repo", target)
    assert result.exit_code == 1
    assert "could not move the branch" in result.stderr
    assert "nothing was imported" in result.stderr
    assert repo_state(target) == before
    assert git(target, "ls-files", "-s") == staged_before
    assert not (target / "prompts" / "extract").exists()
    git(target, "config", "--unset", "core.hooksPath")
    assert do_import(target, scenario.db.path)["versions"] == 11
    assert_clean(target)


def test_a_version_with_the_same_file_as_the_one_before_is_that_version(
    scenario: Scenario, target: Path
) -> None:
    db, ids = scenario.db, scenario.ids
    twins = db.prompt("twins")
    db.version(twins, 1, day(9), system="Same.", model_id=ids["claude"])
    second = db.version(
        twins, 2, day(10), system="Same.", model_id=ids["claude"]
    )  # LLMKit kept a version per save
    db.set_current(twins, second)
    case = db.eval_case(twins, "same", {})
    db.eval_run("run-t", second, case, 3, "ok", day(10, 11))
    summary = do_import(target, db.path)
    [only] = history(target, "twins")
    assert "'twins' version 2 is the same prompt file as the one before it" in " ".join(
        summary["notes"]
    )
    with opened_workspace(target) as ws:
        [result] = EvalRecords(ws.db).results(prompt_key="twins")
        assert (result["version_number"], result["version_sha"]) == (1, only["sha"])
    # LLMKit saves support-bot again with the text it serves: llmkit serves that already.
    served = history(target, "support-bot")[-1]
    fourth = scenario.support_version(4, day(22), SUPPORT[1])
    db.set_current(ids["support"], fourth)
    db.log(ids["support"], ids["gpt"], 200, {"messages": []}, {"choices": []}, day(23))
    again = do_import(target, db.path)
    assert again["commits"] == [] and again["logs"] == 1
    with opened_workspace(target) as ws:
        [newest] = ws.runlog.list(prompt="support-bot", page_size=1)
        assert (newest["version_number"], newest["version_sha"]) == (4, served["sha"])
    third = do_import(target, db.path)
    assert third["commits"] == [] and third["logs"] == 0
    assert not any("version 4" in note for note in third["notes"])


def test_import_into_a_repository_with_no_commits(scenario: Scenario, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "empty", commit=False).root
    summary = do_import(repo, scenario.db.path)
    assert summary["versions"] == 11
    root = git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert git(repo, "log", "-1", "--format=%s", root) == "Import model aliases from LLMKit"
    assert [r["number"] for r in history(repo, "support-bot")] == [1, 2, 3, 4]
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_without_sqlx_records_the_source_is_named_by_its_seeded_rows(
    tmp_path: Path, target: Path
) -> None:
    s = build_scenario(tmp_path / "handmade.db", "5f5efba")
    s.db.conn.execute("DROP TABLE _sqlx_migrations")
    odd = s.db.prompt("odd-dates")
    claude = s.ids["claude"]
    s.db.version(odd, 1, "the day before", system="One.", model_id=claude)
    s.db.version(odd, 2, "1900-01-01 00:00:00", system="Two.", model_id=claude)
    s.db.conn.close()
    first = do_import(target, s.db.path)
    notes = " ".join(first["notes"])
    assert "'odd-dates' version 1: created_at 'the day before' is not a time git can hold" in notes
    assert "'odd-dates' version 2: created_at '1900-01-01 00:00:00'" in notes
    odd_history = history(target, "odd-dates")
    assert [r["message"].splitlines()[0] for r in odd_history] == [
        "Import odd-dates version 1 from LLMKit",
        "Import odd-dates version 2 from LLMKit",
    ]
    copy = tmp_path / "copy.db"
    shutil.copy(s.db.path, copy)
    again = do_import(target, copy)
    assert again["identity"] == first["identity"] and again["commits"] == []
    assert_clean(target)


def test_what_the_author_staged_or_edited_elsewhere_stays_as_it_was(
    scenario: Scenario, target: Path
) -> None:
    (target / "notes.txt").write_text("a draft\n", "utf-8")
    git(target, "add", "notes.txt")
    hello = target / "prompts" / "hello.md"
    hello.write_text(hello.read_text("utf-8") + "\nMore.\n", "utf-8")
    do_import(target, scenario.db.path)
    assert git(target, "diff", "--cached", "--name-only") == "notes.txt"
    assert git(target, "diff", "--name-only") == "prompts/hello.md"
    assert git(target, "log", "--format=%H", "--", "notes.txt") == ""
    assert hello.read_text("utf-8").endswith("\nMore.\n")


def test_a_template_llmkit_cannot_compile_is_imported_with_a_note(
    scenario: Scenario, target: Path
) -> None:
    db, ids = scenario.db, scenario.ids
    tera = db.prompt("tera-only")
    db.version(
        tera,
        1,
        day(9),
        system="{% set_global seen = true %}Hello {{ name }}",
        model_id=ids["claude"],
        prompt_type="dynamic_system",
    )
    summary = do_import(target, db.path)
    [note] = [n for n in summary["notes"] if "'tera-only' version 1" in n]
    assert "Template syntax error" in note and "cannot be rendered until fixed" in note
    assert [r["number"] for r in history(target, "tera-only")] == [1]


# --- kills ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict[str, int]]:
    """One LLMKit database, and what an import of it without a kill leaves: the commit count
    and the durable rows."""
    folder = tmp_path_factory.mktemp("kills")
    s = build_scenario(folder / "llmkit.db", "5f5efba")
    s.db.conn.close()
    repo = scaffold_repo(folder / "reference")
    do_import(repo, s.db.path)
    return s.db.path, commit_count(repo), table_counts(repo)


@pytest.mark.parametrize("step", [*STEPS, *ROW_STEPS])
def test_a_kill_at_any_step_is_finished_or_undone_by_the_next_run(
    step: str, clean_import: tuple[Path, int, dict[str, int]], tmp_path: Path
) -> None:
    db, commits, counts = clean_import
    repo = scaffold_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    killed = run_llmkit("import-llmkit", db, "--repo", repo, env={FAULT_ENV: step}, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_sound(repo)
    # Before the commit point nothing moved; after it, the branch is at the import's tip.
    moved = git(repo, "rev-parse", "HEAD") != head
    assert moved == (step not in STEPS[: STEPS.index("ref-moved")])
    summary = do_import(repo, db)
    recovered = [note for note in summary["notes"] if note.startswith("Recovery")]
    if step in STEPS[1:]:  # a journal was written: recovery says what it did
        expected = "Recovery finished an import" if moved else "Recovery undid an import"
        assert len(recovered) == 1 and recovered[0].startswith(expected), recovered
    else:
        assert recovered == []
    assert_clean(repo)
    assert commit_count(repo) == commits
    assert table_counts(repo) == counts
    assert [r["number"] for r in history(repo, "support-bot")] == [1, 2, 3, 4]
    leftovers = [p.name for p in (repo / ".git").glob("llmkit-import-*")]
    leftovers += [p.name for p in (repo / ".llmkit").glob("import-*")]
    assert leftovers == [] and not (repo / ".git" / "index.lock").exists()
    assert not (repo / ".llmkit" / "import.journal").exists()
    assert do_import(repo, db)["commits"] == []


def test_an_import_into_a_postgresql_store_is_recorded_there_and_a_rerun_adds_nothing(
    scenario: Scenario, target: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = {"LLMKIT_DATABASE_URL": pg_server.new_store()}
    monkeypatch.setenv("LLMKIT_DATABASE_URL", store["LLMKIT_DATABASE_URL"])
    summary = do_import(target, scenario.db.path, env=store)
    assert (summary["eval_results"], summary["logs"]) == (5, 3)
    with opened_workspace(target) as ws:
        assert ws.durable.dialect == "postgresql"
        assert len(ws.runlog.list(prompt="support-bot")) == 2
        assert len(EvalRecords(ws.durable).results(prompt_key="support-bot")) == 4
        local = ws.db.reader().execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert "run_log" not in {row[0] for row in local}, "the durable rows went to SQLite"
    again = do_import(target, scenario.db.path, env=store)
    assert (again["eval_results"], again["logs"], again["commits"]) == (0, 0, [])

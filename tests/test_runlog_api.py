"""The run log through the real app: a call whose text SQLite, UTF-8 or JSON would refuse is
still logged (sanitized, noted, capped), the calls after it are logged too, a writer thread
that dies is restarted, and /healthz says how the writer is doing.

Bodies with lone surrogates are sent as text: `json.dumps` writes a lone surrogate as the
`\\ud800` escape, which is valid JSON (httpx's own encoder refuses it)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_fixtures import ApiEnv, MakeApi
from tests.exec_fixtures import ExecApi, exec_app
from tests.fake_upstream import FakeUpstream

LATER_CALLS = 5


def post_text(
    env: ApiEnv, body: dict[str, Any] | str, path: str = "/v1/chat/completions"
) -> httpx.Response:
    """POST a body as JSON text written by json.dumps (lone surrogates become escapes)."""
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {**env.run, "content-type": "application/json"}
    return env.client.post(path, content=content, headers=headers)


def both(persona: str, question: str = "Where?") -> dict[str, Any]:
    variables = {"persona": persona, "question": question}
    return {"model": "both", "messages": [], "variables": variables}


def later_calls(exec_api: ExecApi) -> list[str]:
    traces = []
    for i in range(LATER_CALLS):
        response = exec_api.complete(both("a sailor", f"later {i}"))
        assert response.status_code == 200, response.text
        traces.append(response.headers["x-llmkit-trace-id"])
    return traces


def logged_trace_ids(env: ApiEnv) -> set[str]:
    response = env.get("/v1/ui/logs", params={"page_size": 500})
    assert response.status_code == 200, response.text
    return {row["trace_id"] for row in response.json()}


def runlog_health(env: ApiEnv, **params: Any) -> tuple[int, dict[str, Any]]:
    response = env.client.get("/healthz", params=params)
    return response.status_code, response.json()


def test_a_lone_surrogate_in_a_variable_is_logged_and_every_later_call_too(
    exec_api: ExecApi,
) -> None:
    env = exec_api.env
    response = post_text(env, both("x\ud800"))
    assert response.status_code == 200, response.text
    bad = response.headers["x-llmkit-trace-id"]
    later = later_calls(exec_api)
    # The writer is alive: the list answers with every call, the first one included.
    assert {bad, *later} <= logged_trace_ids(env)
    row = exec_api.log_row(bad)
    assert row["request"]["messages"][0]["content"] == "You answer as x\ufffd."
    assert row["status"] == "ok" and row["truncated"] == []
    assert any("request" in note and "surrogate" in note for note in row["log_notes"])
    status, health = runlog_health(env)
    assert status == 200
    assert health["status"] == "ok"
    assert health["runlog"]["alive"] and health["runlog"]["queued"] == 0


CHAT_WITH_A_SURROGATE = [
    {"role": "system", "content": json.dumps({"persona": "a sailor"})},
    {"role": "user", "content": "hi \ud800 there"},
    {"role": "assistant", "content": "Ahoy"},
    {"role": "user", "content": "Where to?"},
]


def test_a_lone_surrogate_in_a_message_is_logged_sanitized(exec_api: ExecApi) -> None:
    response = post_text(exec_api.env, {"model": "chat", "messages": CHAT_WITH_A_SURROGATE})
    assert response.status_code == 200, response.text
    row = exec_api.log_row(response.headers["x-llmkit-trace-id"])
    contents = [m["content"] for m in row["request"]["messages"]]
    assert "hi \ufffd there" in contents
    assert row["log_notes"]
    assert set(later_calls(exec_api)) <= logged_trace_ids(exec_api.env)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_lone_surrogate_in_the_upstream_answer_is_logged_sanitized(
    exec_api: ExecApi, stream: bool
) -> None:
    exec_api.fake.enqueue("broken \ud800 answer")
    body = {"model": "static", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    # The answer reaches the client whole, its lone surrogate escaped as the upstream sent it
    # (the text has no UTF-8 form); the row is stored sanitized.
    env = exec_api.env
    with env.client.stream("POST", "/v1/chat/completions", json=body, headers=env.run) as response:
        raw = response.read()
    assert response.status_code == 200, raw
    assert b"broken \\ud800 answer" in raw or (stream and b"\\ud800" in raw)
    [row] = exec_api.env.get("/v1/ui/logs", params={"prompt": "static", "page_size": 1}).json()
    assert exec_api.fake.chat_requests[-1].body["messages"][-1]["content"] == "x"
    answer = row["response"] if stream else row["response"]["choices"][0]["message"]["content"]
    assert "broken \ufffd" in answer
    assert any("response" in note for note in row["log_notes"])
    assert set(later_calls(exec_api)) <= logged_trace_ids(exec_api.env)


def test_a_nul_in_a_variable_is_kept_exactly(exec_api: ExecApi) -> None:
    response = post_text(exec_api.env, both("a\x00b"))
    assert response.status_code == 200, response.text
    row = exec_api.log_row(response.headers["x-llmkit-trace-id"])
    # JSON escapes it, so SQLite never sees a raw NUL and it reads back as it was sent.
    assert row["request"]["messages"][0]["content"] == "You answer as a\x00b."
    assert row["log_notes"] == []


def test_a_nan_parameter_is_logged_as_json(exec_api: ExecApi) -> None:
    body = '{"model": "static", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    response = post_text(exec_api.env, body)
    assert response.status_code == 200, response.text
    row = exec_api.log_row(response.headers["x-llmkit-trace-id"])
    assert row["request"]["params"]["temperature"] == "nan"
    assert any("made JSON-able" in note for note in row["log_notes"])
    # The list is served as strict JSON: one NaN would make every page of it fail.
    assert response.headers["x-llmkit-trace-id"] in logged_trace_ids(exec_api.env)


@pytest.fixture
def capped(fake: FakeUpstream, tmp_path: Path) -> Iterator[ExecApi]:
    """The app over the execution repository with run-log fields capped at 4 KiB."""
    with exec_app(tmp_path / "repo", fake, log_field_max_bytes=4096) as api:
        yield api


def test_a_giant_field_is_cut_to_the_cap_and_readers_are_told(capped: ExecApi) -> None:
    question = " ".join(["How far?"] * 2000)
    response = capped.complete(both("a sailor", question))
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    assert answer == f"ok: Question: {question}"
    row = capped.log_row(response.headers["x-llmkit-trace-id"])
    assert row["truncated"] == ["request", "response"]
    assert isinstance(row["request"], str) and len(row["request"].encode()) <= 4096
    system = '{"role": "system", "content": "You answer as a sailor."}'
    assert row["request"].startswith('{"messages": [' + system)
    listed = capped.env.get("/v1/ui/logs").json()
    assert listed[0]["truncated"] == ["request", "response"]


# -- the writer's health ---------------------------------------------------------------------


class WriterFault(BaseException):
    """Escapes every `except Exception`: what would kill the writer thread."""


def test_a_dead_writer_is_restarted_and_healthz_shows_it(
    exec_api: ExecApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = exec_api.env
    writer = env.ws.runlog._writer
    _, before = runlog_health(env)
    store = writer._store
    faults = [1]

    def dying_once(rows: Any) -> None:
        if faults:
            faults.pop()
            raise WriterFault("killed by the test")
        store(rows)

    monkeypatch.setattr(writer, "_store", dying_once)
    response = exec_api.complete(both("a sailor", "first"))
    assert response.status_code == 200
    held = response.headers["x-llmkit-trace-id"]
    later = later_calls(exec_api)
    assert {held, *later} <= logged_trace_ids(env), "rows lost with the dead writer"
    assert not faults, "the fault never fired"
    status, health = runlog_health(env)
    assert status == 200 and health["status"] == "ok"
    runlog = health["runlog"]
    assert runlog["restarts"] == before["runlog"]["restarts"] + 1
    assert (runlog["alive"], runlog["last_error"]) == (True, "WriterFault")
    assert runlog["last_error_at"] is not None


ECHO_FILES = {"prompts/echoed.md": "---\nmodel: echo\n---\n<!-- role:system -->\nEchoed.\n"}


def test_healthz_says_degraded_while_the_run_log_cannot_write(make_api: MakeApi) -> None:
    api = make_api(ECHO_FILES)
    status, health = runlog_health(api, strict="true")
    assert (status, health["status"]) == (200, "ok")
    assert set(health["runlog"]) >= {
        "alive",
        "queued",
        "rows_written",
        "rows_rejected",
        "rows_lost",
        "write_failures",
        "restarts",
        "last_error",
        "durable",
    }
    other = sqlite3.connect(api.ws.settings.db_path, isolation_level=None)
    try:
        other.execute("ALTER TABLE run_log RENAME TO run_log_away")
        body = {"model": "echoed", "messages": [{"role": "user", "content": "hi"}]}
        response = api.client.post("/v1/chat/completions", json=body, headers=api.run)
        assert response.status_code == 200, response.text
        trace_id = response.headers["x-llmkit-trace-id"]
        for _ in range(200):
            status, health = runlog_health(api)
            if health["status"] == "degraded":
                break
        assert (status, health["status"]) == (200, "degraded")
        assert health["runlog"]["last_error"] == "OperationalError"
        assert health["runlog"]["write_failures"] >= 1
        assert "run_log" not in json.dumps(health), "error messages are not served without a key"
        status, health = runlog_health(api, strict="true")
        assert (status, health["status"]) == (503, "degraded")
    finally:
        other.execute("ALTER TABLE run_log_away RENAME TO run_log")
        other.close()
    assert trace_id in logged_trace_ids(api)
    status, health = runlog_health(api, strict="true")
    assert (status, health["status"]) == (200, "ok")


def test_the_writer_survives_a_non_sqlite_error_from_every_insert(
    exec_api: ExecApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that makes every batch insert raise: calls are still logged, row by row."""
    writer = exec_api.env.ws.runlog._writer

    def broken(rows: Any) -> None:
        raise RuntimeError("a bug in the batch insert")

    monkeypatch.setattr(writer, "_insert_batch", broken)
    later = later_calls(exec_api)
    assert set(later) <= logged_trace_ids(exec_api.env)
    _, health = runlog_health(exec_api.env)
    assert health["runlog"]["alive"] and health["runlog"]["last_error"] == "RuntimeError"


# -- durable ---------------------------------------------------------------------------------


@pytest.fixture
def durable(fake: FakeUpstream, tmp_path: Path) -> Iterator[ExecApi]:
    """The app over the execution repository with durable run logging."""
    # A minute-long window: only a durable caller can make a row be written before it ends.
    with exec_app(tmp_path / "repo", fake, log_durable=True, log_batch_ms=60_000) as api:
        yield api


def committed(env: ApiEnv, trace_id: str) -> bool:
    """Whether the row is in the database file, read over a connection of its own."""
    conn = sqlite3.connect(env.ws.settings.db_path)
    try:
        row = conn.execute("SELECT 1 FROM run_log WHERE trace_id = ?", (trace_id,)).fetchone()
    finally:
        conn.close()
    return row is not None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_durable_app_commits_each_row_before_it_answers(durable: ExecApi, stream: bool) -> None:
    for i in range(3):
        messages = [{"role": "user", "content": f"n{i}"}]
        body = {"model": "static", "stream": stream, "messages": messages}
        response, events = durable.stream_events(body)
        assert response.status_code == 200, response.text
        assert not stream or events[-1] == "[DONE]"
        assert committed(durable.env, response.headers["x-llmkit-trace-id"])
    durable.fake.enqueue(status=500, error="upstream down")
    failed = durable.complete({"model": "static", "messages": [{"role": "user", "content": "x"}]})
    assert failed.status_code == 502
    assert committed(durable.env, failed.headers["x-llmkit-trace-id"]), "an error answer too"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_durable_app_answers_503_when_its_row_cannot_be_committed(
    durable: ExecApi, stream: bool
) -> None:
    env = durable.env
    env.ws.runlog.durable_wait_s = 0.3
    other = sqlite3.connect(env.ws.settings.db_path, isolation_level=None)
    try:
        other.execute("ALTER TABLE run_log RENAME TO run_log_away")
        body = {"model": "static", "stream": stream, "messages": [{"role": "user", "content": "x"}]}
        response, events = durable.stream_events(body)
    finally:
        other.execute("ALTER TABLE run_log_away RENAME TO run_log")
        other.close()
    trace_id = response.headers["x-llmkit-trace-id"]
    if stream:
        # The answer was streamed; in place of [DONE] comes the error.
        assert response.status_code == 200
        assert "[DONE]" not in events
        error = events[-1]["error"]
    else:
        assert response.status_code == 503
        error = response.json()["error"]
    assert error["code"] == "run_log_unavailable"
    assert trace_id in error["message"]
    assert env.ws.runlog.flush(timeout=10)
    assert committed(env, trace_id), "the row stays queued and is written once the log can"


# -- paging and filters over HTTP --------------------------------------------------------


def logged_api(make_api: MakeApi, count: int) -> ApiEnv:
    """An app whose run log holds `count` calls: prompts p0-p2, models m0/m1, one minute apart
    from 2024-05-01T10:00Z, every fifth an error."""
    from llmkit.runlog_record import RunRecord

    env = make_api()
    for i in range(count):
        env.ws.runlog.log(
            RunRecord(
                prompt_key=f"p{i % 3}",
                model=f"m{i % 2}",
                request={"i": i},
                status="error" if i % 5 == 0 else "ok",
                created_at=f"2024-05-01T{10 + i // 60:02d}:{i % 60:02d}:00.000Z",
            )
        )
    assert env.ws.runlog.flush()
    return env


def walk(env: ApiEnv, **params: Any) -> list[dict[str, Any]]:
    """Every page of /v1/ui/logs by its x-next-cursor, checking the Link header on the way."""
    rows: list[dict[str, Any]] = []
    response = env.get("/v1/ui/logs", params=params)
    for _ in range(100):
        assert response.status_code == 200, response.text
        rows.extend(response.json())
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in response.headers
            return rows
        link = response.headers["link"]
        assert link.endswith('>; rel="next"') and f"cursor={cursor}" in link
        # The Link is the next page's whole URL, filters included.
        response = env.get(link[link.index("<") + 1 : link.index(">")])
    raise AssertionError("more than 100 pages")


def test_logs_page_by_cursor_and_by_number_with_filters(make_api: MakeApi) -> None:
    env = logged_api(make_api, 70)
    everything = env.get("/v1/ui/logs", params={"page_size": 500}).json()
    assert len(everything) == 70
    assert walk(env, limit=8) == everything
    # LLMKit's UI pages by number; the page after a numbered page is named too.
    second = env.get("/v1/ui/logs", params={"page": 2, "page_size": 10})
    assert second.json() == everything[10:20]
    after = env.get("/v1/ui/logs", params={"cursor": second.headers["x-next-cursor"], "limit": 10})
    assert after.json() == everything[20:30]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"prompt": "p1"}, lambda r: r["prompt_key"] == "p1"),
        ({"model": "m0"}, lambda r: r["model"] == "m0"),
        ({"status": "error"}, lambda r: r["status"] == "error"),
        (
            {"from": "2024-05-01T10:30:00Z", "to": "2024-05-01T11:05:00Z"},
            lambda r: "2024-05-01T10:30" <= r["created_at"] < "2024-05-01T11:05",
        ),
        (
            {"prompt": "p2", "model": "m1", "since": "2024-05-01T10:20:00Z"},
            lambda r: (
                r["prompt_key"] == "p2"
                and r["model"] == "m1"
                and r["created_at"] >= "2024-05-01T10:20"
            ),
        ),
    ]
    for params, keep in cases:
        expected = [r for r in everything if keep(r)]
        assert expected, params
        assert walk(env, limit=4, **params) == expected, params
        count = env.get("/v1/ui/logs/count", params=params).json()
        assert count == {"count": len(expected)}, params


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("cursor=garbage", "cursor"),
        ("cursor=" + "x" * 500, "cursor"),
        ("page=2&cursor=WzEsMl0", "cursor"),
        ("status=bogus", "status"),
        ("model=", "model"),
        ("from=yesterday", "from"),
        ("to=2024-13-01", "to"),
        ("since=2024-05-01&from=2024-05-02", "from"),
        ("limit=0", "limit"),
        ("page_size=10&limit=20", "limit"),
        ("version=v1", "version"),
    ],
)
def test_bad_log_filters_are_400s_naming_the_parameter(
    make_api: MakeApi, query: str, param: str
) -> None:
    env = make_api()
    for path in ("/v1/ui/logs", "/v1/ui/logs/count"):
        if path.endswith("count") and ("cursor" in query or "limit" in query):
            continue
        response = env.get(f"{path}?{query}")
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["param"] == param, (path, response.json())

"""Run-log ids: handed out when a call starts (a completion's id carries one), before the writer
has written its row; unique across the processes that share the log; never handed out again,
even by a process that starts after another was SIGKILLed; an id whose row was never written
answers a 404 that says why, never another call. The store's tests run on each durable backend
(SQLite and PostgreSQL, see tests/pg.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from llmkit.db import open_durable
from llmkit.errors import BadRequest, NotFound
from llmkit.runlog import RunLog
from llmkit.runlog_record import RunRecord
from tests.api_fixtures import SEED_FILES, ApiEnv, MakeApi
from tests.helpers import clean_env
from tests.pg import Outage, PgServer

PROCESSES = 3
IDS_EACH = 400
WAIT_S = 60

# Takes ids from a RunLog on the database named by argv[1], as a server does (start() reserves
# blocks ahead on a thread), prints them as one JSON line, then waits to be killed.
TAKE_IDS = """
import json, sys, time
from llmkit.db import open_durable
from llmkit.runlog import RunLog
log = RunLog(open_durable(sys.argv[1]))
log.start()
ids = [log.new_id() for _ in range(int(sys.argv[2]))]
print(json.dumps(ids), flush=True)
time.sleep(float(sys.argv[3]))
log.close()
"""


def take_ids(db_path: str, count: int, linger_s: float = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", TAKE_IDS, str(db_path), str(count), str(linger_s)],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def ids_of(proc: subprocess.Popen[str]) -> list[int]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the process printed no ids (exit {proc.poll()})"
    ids: list[int] = json.loads(line)
    return ids


@pytest.fixture
def db_path(durable_url: str) -> str:
    """This test's durable store (a SQLite path or a PostgreSQL URL), migrated once, so that
    processes race only for ids."""
    RunLog(open_durable(durable_url)).close()
    return durable_url


@pytest.fixture
def runlog(db_path: str) -> Iterator[RunLog]:
    log = RunLog(open_durable(db_path), batch_ms=5)
    log.start()
    yield log
    log.close()


def record(**fields: Any) -> RunRecord:
    return RunRecord(**{"prompt_key": "hello", "model": "echo", "request": {}, **fields})


def test_processes_sharing_the_log_never_hand_out_the_same_id(db_path: str) -> None:
    procs = [take_ids(db_path, IDS_EACH) for _ in range(PROCESSES)]
    try:
        taken = [ids_of(proc) for proc in procs]
        for proc in procs:
            assert proc.wait(WAIT_S) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    every = [i for ids in taken for i in ids]
    assert len(every) == PROCESSES * IDS_EACH
    assert len(set(every)) == len(every), "an id was handed out twice"
    assert min(every) >= 1
    # Each process hands out its ids in order.
    assert all(ids == sorted(ids) for ids in taken)


def test_ids_a_killed_process_handed_out_are_never_reused_and_answer_404(db_path: str) -> None:
    proc = take_ids(db_path, 50, linger_s=WAIT_S)
    try:
        lost = ids_of(proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(WAIT_S) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    log = RunLog(open_durable(db_path), batch_ms=5)
    log.start()
    try:
        after = [log.new_id() for _ in range(50)]
        assert min(after) > max(lost), "an id of the killed process was handed out again"
        kept = record()
        kept.id = after[0]
        log.log(kept)
        assert log.flush()
        assert log.find(str(after[0]))["trace_id"] == kept.trace_id
        for gone in (lost[0], lost[-1], after[1]):
            with pytest.raises(NotFound) as caught:
                log.find(str(gone))
            assert f"No log entry with id {gone}" in caught.value.message
            assert "still running" in caught.value.message
    finally:
        log.close()


def test_the_counter_starts_above_the_rows_already_in_the_log(db_path: str) -> None:
    db = open_durable(db_path)
    log = RunLog(db, batch_ms=5)
    old = [record() for _ in range(5)]
    for r in old:
        log.log(r)
    assert log.flush()
    highest = max(row["id"] for row in log.list())
    # A row written with an id from elsewhere (a copied log) moves the counter past it.
    db.execute_write(
        "INSERT INTO run_log (id, trace_id, prompt_key, model, request, status, source,"
        " created_at) VALUES (?, 'copied', 'hello', 'echo', '{}', 'ok', 'api', ?)",
        (highest + 1000, old[0].created_at),
    )
    log.close()
    reopened = RunLog(open_durable(db_path))
    try:
        assert reopened.new_id() == highest + 1001
    finally:
        reopened.close()


def test_a_record_logged_without_an_id_is_given_one_by_the_writer(runlog: RunLog) -> None:
    given = runlog.new_id()
    assert given is not None
    without = record()
    runlog.log(without)
    assert runlog.flush()
    stored = runlog.get(without.trace_id)
    assert stored is not None and stored["id"] > given


def test_without_waiting_an_id_comes_only_from_memory(db_path: str) -> None:
    log = RunLog(open_durable(db_path))  # not started: nothing reserves ahead
    try:
        assert log.new_id(wait=False) is None
        first = log.new_id()
        assert first is not None
        # The first block holds one id; the next is reserved only when asked with wait.
        assert log.new_id(wait=False) is None
        assert log.new_id() == first + 1
    finally:
        log.close()


def test_digits_name_an_id_first_and_else_a_trace_id_prefix(runlog: RunLog) -> None:
    first = record(trace_id="1234567" + "a" * 25)
    runlog.log(first)
    assert runlog.flush()
    first_id = runlog.get(first.trace_id)["id"]  # type: ignore[index]
    # Digits that are no row's id: a trace id prefix (as `llmkit logs` shows trace ids).
    assert runlog.find("123456")["trace_id"] == first.trace_id
    # Digits that are a row's id: that row, though a trace id starts with them too.
    named = record(trace_id=f"{first_id:06d}" + "b" * 26)
    named.id = runlog.new_id()
    runlog.log(named)
    assert runlog.flush()
    assert runlog.find(str(first_id))["trace_id"] == first.trace_id
    # More digits than an id can have: only a trace id prefix.
    longer = f"{first_id:06d}" + "b" * 13
    assert runlog.find(longer)["trace_id"] == named.trace_id
    with pytest.raises(NotFound) as caught:
        runlog.find("99999")
    assert caught.value.param == "id"
    with pytest.raises(BadRequest):
        runlog.find("1234a")  # too short for a trace id prefix, and not digits alone
    with pytest.raises(NotFound):
        runlog.find("9" * 30)


@pytest.fixture
def api(make_api: MakeApi) -> ApiEnv:
    """The seed repository, its prompts on the offline echo model."""
    return make_api(files={**SEED_FILES, "llmkit.yaml": "models:\n  default:\n    model: echo\n"})


def test_completion_ids_name_the_log_entry_of_their_call(api: ApiEnv) -> None:
    body = {"model": "hello", "variables": {"personality": "calm", "question": "Why?"}}
    answered = api.post("/v1/chat/completions", json=body)
    assert answered.status_code == 200, answered.text
    completion_id = answered.json()["id"]
    prefix, _, log_id = completion_id.partition("-")
    assert prefix == "chatcmpl" and log_id.isdigit()
    entry = api.get(f"/v1/ui/logs/{log_id}")
    assert entry.status_code == 200, entry.text
    assert entry.json()["id"] == int(log_id)
    assert entry.json()["trace_id"] == answered.headers["x-llmkit-trace-id"]
    # The row keeps the provider's own id for the answer.
    assert json.loads(entry.json()["response_data"])["id"] != completion_id
    # The model as the prompt names it, with the id LLMKit's model list gives that name.
    assert (entry.json()["model_name"], entry.json()["model"]) == ("default", "echo")
    [default] = [m for m in api.get("/v1/ui/models").json() if m["name"] == "default"]
    assert entry.json()["model_id"] == default["id"]
    assert entry.json()["prompt_id"] == api.get("/v1/ui/prompts/hello").json()["id"]

    streamed = api.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [
        json.loads(line[5:])
        for line in streamed.text.splitlines()
        if line.startswith("data:") and line.strip() != "data: [DONE]"
    ]
    assert len(chunks) > 1
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    stream_log_id = int(chunks[0]["id"].split("-")[1])
    assert stream_log_id != int(log_id)
    entry = api.get(f"/v1/ui/logs/{stream_log_id}").json()
    assert entry["trace_id"] == streamed.headers["x-llmkit-trace-id"]
    assert entry["stream"] is True


def test_an_unknown_log_id_is_a_404_naming_it(api: ApiEnv) -> None:
    response = api.get("/v1/ui/logs/987654321")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "id" and "987654321" in error["message"]


def test_while_ids_cannot_be_reserved_calls_are_logged_and_given_ids_later(
    db_path: str, store_outage: Outage
) -> None:
    db = open_durable(db_path)
    log = RunLog(db, batch_ms=5)
    try:
        store_outage.begin("run_log_ids")
        log.start()
        # No id at hand, none to be had: the call goes on without one (never an exception).
        assert log.new_id(wait=False) is None
        assert log.new_id() is None
        waiting = record()
        log.log(waiting)
        assert not log.flush(timeout=0.5), "written without an id"
        assert log.health()["last_error"] == store_outage.error_name
    finally:
        store_outage.end()
    try:
        assert log.flush(timeout=WAIT_S)
        stored = log.get(waiting.trace_id)
        assert stored is not None and stored["id"] >= 1
        assert log.new_id() != stored["id"]
    finally:
        log.close()


def test_on_postgresql_a_row_inserted_without_an_id_never_takes_a_reserved_one(
    pg_server: PgServer,
) -> None:
    """PostgreSQL's run_log takes the id of a row inserted without one from the counter the
    blocks are reserved from, so such a row cannot take an id handed out but not yet written.
    (SQLite gives such a row the largest id plus one, as before ids came in blocks.)"""
    db = open_durable(pg_server.new_store())
    log = RunLog(db, batch_ms=5)
    try:
        reserved = [log.new_id() for _ in range(8)]
        assert None not in reserved
        db.execute_write(
            "INSERT INTO run_log (trace_id, prompt_key, model, request, status, source,"
            " created_at) VALUES ('by-hand', 'hello', 'echo', '{}', 'ok', 'api',"
            " '2030-01-01T00:00:00.000Z')"
        )
        by_hand = log.get("by-hand")
        assert by_hand is not None and by_hand["id"] not in reserved
        rows = []
        for log_id in reserved:
            rows.append(record(id=log_id))
            log.log(rows[-1])
        log.start()
        assert log.flush()
        assert [log.get(r.trace_id)["id"] for r in rows] == reserved  # type: ignore[index]
        assert log.health()["rows_rejected"] == 0
        assert log.new_id() not in {*reserved, by_hand["id"]}
    finally:
        log.close()
        db.close()

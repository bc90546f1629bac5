"""The official `openai` client, sync and async, against a real `llmkit serve` subprocess whose
prompts run on the fake upstream; and what only a real server shows: a client that leaves
mid-stream, and SIGTERM under load."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.exec_fixtures import ExecServer, build_exec_repo, read_run_log, server_env
from tests.fake_upstream import FakeUpstream
from tests.helpers import poll, start_server

BOTH_VARS = {"persona": "a pirate", "question": "Where is the gold?"}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WAIT_S = 15.0


def client_for(server: ExecServer, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.server.v1, api_key=key or server.server.admin_key, max_retries=0, timeout=30
    )


def async_client_for(server: ExecServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.server.v1, api_key=server.server.admin_key, max_retries=0, timeout=30
    )


def log_row(server: ExecServer, trace_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.server.v1}/ui/logs/{trace_id}", headers=server.server.headers(), timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def run_key(module_exec_server: ExecServer) -> str:
    """A run-scoped key created over HTTP with the admin key printed at first start."""
    return module_exec_server.server.create_key("sdk tests")


def test_first_start_prints_the_admin_key(exec_server: ExecServer) -> None:
    key = exec_server.server.admin_key
    assert key.startswith("llmkit_")
    assert exec_server.server.stdout().splitlines()[0] == key


# -- sync client -------------------------------------------------------------------------------


def test_sync_plain_completion_with_variables(exec_server: ExecServer, run_key: str) -> None:
    client = client_for(exec_server, run_key)
    raw = client.chat.completions.with_raw_response.create(
        model="both", messages=[], extra_body={"variables": BOTH_VARS}
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "both"
    assert completion.choices[0].message.content == "ok: Question: Where is the gold?"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-llmkit-prompt-version"] == "1"
    row = log_row(exec_server, raw.headers["x-llmkit-trace-id"])
    assert row["prompt_key"] == "both" and row["source"] == "api" and row["status"] == "ok"


def test_sync_llmkit_convention(exec_server: ExecServer) -> None:
    completion = client_for(exec_server).chat.completions.create(
        model="both",
        messages=[
            {"role": "system", "content": json.dumps({"persona": "a poet"})},
            {"role": "user", "content": json.dumps({"question": "Why?"})},
        ],
    )
    assert completion.choices[0].message.content == "ok: Question: Why?"
    assert (
        exec_server.fake.chat_requests[0].body["messages"][0]["content"] == "You answer as a poet."
    )


def test_sync_streaming(exec_server: ExecServer) -> None:
    exec_server.fake.enqueue(
        "one two three", usage={"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    )
    stream = client_for(exec_server).chat.completions.create(
        model="static",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "static" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 6


def test_sync_stream_route_with_raw_httpx(exec_server: ExecServer) -> None:
    with httpx.stream(
        "POST",
        f"{exec_server.server.v1}/chat/completions/stream",
        json={"model": "static", "messages": [{"role": "user", "content": "hi"}]},
        headers=exec_server.server.headers(),
        timeout=10,
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_sync_stream_failing_mid_way_raises_api_error(exec_server: ExecServer) -> None:
    exec_server.fake.enqueue("an answer that the upstream cuts short", fault="drop")
    stream = client_for(exec_server).chat.completions.create(
        model="static", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)  # noqa: PERF402 (the chunks before the error are kept)
    assert received, "the error came before any chunk"
    assert "fake-model" in caught.value.message
    assert "closed" in caught.value.message or "connection" in caught.value.message


def test_sync_json_mode(exec_server: ExecServer) -> None:
    exec_server.fake.enqueue("not json")
    exec_server.fake.enqueue('{"answer": "yes"}')
    completion = client_for(exec_server).chat.completions.create(
        model="json", messages=[{"role": "user", "content": "?"}]
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "yes"}
    assert len(exec_server.fake.chat_requests) == 2
    completion = client_for(exec_server).chat.completions.create(
        model="static",
        messages=[{"role": "user", "content": '{"k": 1}'}],
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content or "") == {"k": 1}


def test_sync_json_mode_invalid_twice_raises_502(exec_server: ExecServer) -> None:
    exec_server.fake.enqueue("no")
    exec_server.fake.enqueue("no again")
    with pytest.raises(openai.InternalServerError) as caught:
        client_for(exec_server).chat.completions.create(
            model="json", messages=[{"role": "user", "content": "?"}]
        )
    assert caught.value.status_code == 502
    assert "valid JSON" in caught.value.message


def test_sync_tools_plain_and_streamed(exec_server: ExecServer) -> None:
    client = client_for(exec_server)
    exec_server.fake.enqueue(
        tool_calls=[{"id": "call_a", "name": "get_weather", "arguments": {"city": "Rome"}}]
    )
    completion = client.chat.completions.create(
        model="static",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert (call.id, call.type, call.function.name) == ("call_a", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Rome"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert exec_server.fake.chat_requests[0].body["tools"] == [WEATHER_TOOL]

    exec_server.fake.enqueue(
        tool_calls=[{"id": "call_b", "name": "get_weather", "arguments": {"city": "Lima"}}]
    )
    chunks = list(
        client.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "weather?"}], stream=True
        )
    )
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert (
        pieces[0].id == "call_b" and pieces[0].function and pieces[0].function.name == "get_weather"
    )
    assert json.loads("".join(p.function.arguments or "" for p in pieces if p.function)) == {
        "city": "Lima"
    }


def test_sync_multi_turn_chat(exec_server: ExecServer) -> None:
    history: list[Any] = [
        {"role": "system", "content": json.dumps({"persona": "a sailor"})},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Ahoy"},
        {"role": "user", "content": "Where to?"},
    ]
    completion = client_for(exec_server).chat.completions.create(model="chat", messages=history)
    assert completion.choices[0].message.content == "ok: Where to?"
    sent = exec_server.fake.chat_requests[0].body["messages"]
    assert sent[0] == {"role": "system", "content": "You are a sailor."}
    assert sent[-3:] == history[1:]


def test_sync_pinned_versions(exec_server: ExecServer) -> None:
    client = client_for(exec_server)
    for spec, number in (
        ("pinned@1", 1),
        ("pinned@stable", 2),
        (f"pinned@{exec_server.shas.v2[:8]}", 2),
        ("pinned@v1.0", 1),
        ("pinned", 3),
    ):
        raw = client.chat.completions.with_raw_response.create(model=spec, messages=[])
        assert raw.parse().choices[0].message.content == f"system: Version {number} speaking.", spec
        assert raw.headers["x-llmkit-prompt-version"] == str(number)


def test_sync_exception_classes(exec_server: ExecServer) -> None:
    client = client_for(exec_server)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-prompt", messages=[])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="pinned@42", messages=[])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="both", messages=[], extra_body={"variables": {}})
    assert "persona" in bad.value.message and "question" in bad.value.message
    with pytest.raises(openai.BadRequestError) as not_json:
        client.chat.completions.create(
            model="system",
            messages=[
                {"role": "system", "content": "plain words"},
                {"role": "user", "content": "x"},
            ],
        )
    assert "JSON object" in not_json.value.message
    with pytest.raises(openai.AuthenticationError):
        client_for(exec_server, "llmkit_" + "x" * 32).chat.completions.create(
            model="static", messages=[]
        )
    exec_server.fake.enqueue(status=401, error="bad upstream key")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="static", messages=[{"role": "user", "content": "x"}])
    exec_server.fake.enqueue(status=429, headers={"retry-after": "0"}, error="slow down")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="static", messages=[{"role": "user", "content": "x"}])
    exec_server.fake.enqueue(status=500, error="boom")
    with pytest.raises(openai.InternalServerError) as upstream:
        client.chat.completions.create(model="static", messages=[{"role": "user", "content": "x"}])
    assert upstream.value.status_code == 502
    exec_server.fake.enqueue(fault="hang")
    with pytest.raises(openai.APIStatusError) as hung:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert hung.value.status_code == 504


def test_sync_missing_provider_key_names_the_variable(exec_server: ExecServer) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client_for(exec_server).chat.completions.create(
            model="nokey", messages=[{"role": "user", "content": "x"}]
        )
    assert "FAKE_KEY_NOT_SET" in caught.value.message


def test_sync_run_key_cannot_use_ui_routes(exec_server: ExecServer, run_key: str) -> None:
    response = httpx.post(
        f"{exec_server.server.v1}/ui/prompts/execute/static",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {run_key}"},
        timeout=10,
    )
    assert response.status_code == 403


# -- async client ------------------------------------------------------------------------------


def test_async_plain_streaming_and_errors(exec_server: ExecServer) -> None:
    async def scenario() -> None:
        client = async_client_for(exec_server)
        try:
            completion = await client.chat.completions.create(
                model="both", messages=[], extra_body={"variables": BOTH_VARS}
            )
            assert completion.choices[0].message.content == "ok: Question: Where is the gold?"
            assert completion.model == "both"
            stream = await client.chat.completions.create(
                model="static", messages=[{"role": "user", "content": "async hi"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "ok: async hi"
            exec_server.fake.enqueue('{"answer": "a"}')
            completion = await client.chat.completions.create(
                model="json", messages=[{"role": "user", "content": "?"}]
            )
            assert json.loads(completion.choices[0].message.content or "") == {"answer": "a"}
            completion = await client.chat.completions.create(model="pinned@2", messages=[])
            assert completion.choices[0].message.content == "system: Version 2 speaking."
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="missing-prompt", messages=[])
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="both", messages=[], extra_body={"variables": {}}
                )
            exec_server.fake.enqueue(status=429, headers={"retry-after": "0"})
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="static", messages=[{"role": "user", "content": "x"}]
                )
            results = await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model="static", messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(10)
                ]
            )
            assert sorted(r.choices[0].message.content or "" for r in results) == sorted(
                f"ok: n{i}" for i in range(10)
            )
        finally:
            await client.close()

    asyncio.run(scenario())


# -- what only a real server shows ---------------------------------------------------------------


def test_client_leaving_mid_stream_cancels_upstream_and_logs_the_partial_call(
    exec_server: ExecServer,
) -> None:
    exec_server.fake.enqueue("many words " * 20, fault="slow", delay=1.0)
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            f"{exec_server.server.v1}/chat/completions",
            json={
                "model": "static",
                "stream": True,
                "messages": [{"role": "user", "content": "talk"}],
            },
            headers=exec_server.server.headers(),
        ) as response,
    ):
        assert response.status_code == 200
        trace_id = response.headers["x-llmkit-trace-id"]
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    [upstream] = exec_server.fake.chat_requests
    assert upstream.done.wait(WAIT_S), "the upstream call was never ended"
    assert upstream.outcome == "disconnected"

    def logged() -> bool:
        response = httpx.get(
            f"{exec_server.server.v1}/ui/logs/{trace_id}", headers=exec_server.server.headers()
        )
        return response.status_code == 200

    poll(logged, "the cancelled call's run log row", timeout_s=WAIT_S)
    row = log_row(exec_server, trace_id)
    assert row["status"] == "cancelled"
    assert row["stream"] is True
    assert isinstance(row["response"], str) and len(row["response"]) < len("many words " * 20)


def test_sigterm_under_load_loses_no_row(fake: FakeUpstream, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build_exec_repo(repo, fake.url)
    server = start_server(repo, tmp_path, server_env())
    total = 200
    for _ in range(total):
        fake.enqueue("loaded", fault="slow", delay=0.4)
    results: list[tuple[int, str | None]] = []
    failures: list[str] = []
    lock = threading.Lock()
    # One client for every thread: building one per request (an SSL context each) is slow.
    client = httpx.Client(limits=httpx.Limits(max_connections=total, max_keepalive_connections=0))

    def call(i: int) -> None:
        try:
            response = client.post(
                f"{server.v1}/chat/completions",
                json={"model": "static", "messages": [{"role": "user", "content": f"r{i}"}]},
                headers=server.headers(),
                timeout=30,
            )
            with lock:
                results.append((response.status_code, response.headers.get("x-llmkit-trace-id")))
        except httpx.HTTPError as exc:
            with lock:
                failures.append(type(exc).__name__)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(total)]
    try:
        for thread in threads:
            thread.start()
        poll(
            lambda: len(fake.chat_requests) >= total // 2,
            "requests in flight upstream",
            timeout_s=WAIT_S,
        )
        returncode = server.terminate()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    for thread in threads:
        thread.join(WAIT_S)
    client.close()
    assert not any(t.is_alive() for t in threads)
    assert returncode == 0, server.stderr()
    ok = [trace for status, trace in results if status == 200]
    assert len(ok) >= total // 2, (len(ok), failures[:5])
    rows = {row["trace_id"]: row for row in read_run_log(server.db_path)}
    assert all(trace in rows for trace in ok), "rows lost on SIGTERM"
    assert all(rows[trace]["status"] == "ok" for trace in ok)

    restarted = start_server(repo, tmp_path, server_env())
    try:
        count = httpx.get(
            f"{restarted.v1}/ui/logs/count",
            params={"prompt": "static"},
            headers=restarted.headers(),
            timeout=10,
        ).json()["count"]
        assert count == len(rows) >= len(ok)
    finally:
        restarted.terminate()

"""Span export over OTLP/HTTP: one span per logged call, sent to a real receiver on 127.0.0.1
(the `collector` fixture), configured by the standard OTEL_* variables; a collector that fails
or stalls costs spans (counted), never a call."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from llmkit.otlp import (
    encoded_request,
    parse_traceparent,
    rejected_spans,
    span_ids,
    span_of,
)
from llmkit.otlp_config import CONTENT_TYPES, config_from_env
from llmkit.otlp_export import exporter_from_env
from llmkit.runlog import RunLog
from llmkit.runlog_record import COLUMNS, RunRecord
from llmkit.workspace import Workspace
from tests.api_fixtures import running_api
from tests.eval_fixtures import JOKE_MD, JUDGED_CASE, EvalRepo, eval_api
from tests.exec_fixtures import FAKE_KEY_ENV, FAKE_KEY_VALUE, ExecApi, build_exec_repo
from tests.fake_upstream import FakeUpstream
from tests.helpers import clean_env, poll, serving
from tests.otlp_fixtures import Collector, MakeTracedApi, OtelEnv, decode_export_request

ECHO_BODY = {
    "model": "echo",
    "variables": {"language": "German"},
    "messages": [{"role": "user", "content": "Hi"}],
}


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    """A span's attributes as plain values (int64 strings as ints, arrays as lists)."""

    def plain(value: dict[str, Any]) -> Any:
        [(kind, inner)] = value.items()
        if kind == "intValue":
            return int(inner)
        if kind == "arrayValue":
            return [plain(v) for v in inner.get("values", [])]
        return inner

    return {a["key"]: plain(a["value"]) for a in span["attributes"]}


def spans_of(api: ExecApi, collector: Collector, count: int) -> list[dict[str, Any]]:
    """The collector's spans once `count` have arrived (the run log flushed first)."""
    assert api.env.ws.runlog.flush(10)
    spans = poll(lambda: len(collector.spans) >= count and collector.spans, f"{count} spans")
    assert spans is not None
    return spans


def health(api: ExecApi) -> dict[str, Any]:
    response = api.env.client.get("/healthz")
    assert response.status_code == 200
    return response.json()["otlp"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_a_completion_is_one_span_with_the_genai_attributes(
    traced_api: MakeTracedApi, collector: Collector, protocol: str
) -> None:
    api = traced_api(
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME="prompts-svc",
        OTEL_RESOURCE_ATTRIBUTES="team=ml,env=p%20q",
    )
    response = api.complete({"model": "chat", "variables": {"persona": "a pirate"}})
    assert response.status_code == 200, response.text
    trace = response.headers["x-llmkit-trace-id"]
    [span] = spans_of(api, collector, 1)
    [request] = collector.requests
    assert request.path == "/v1/traces"
    assert request.headers["content-type"] == CONTENT_TYPES[protocol]
    [resource] = request.body["resourceSpans"]
    resource_attrs = attrs(resource["resource"])
    assert resource_attrs["service.name"] == "prompts-svc"
    assert resource_attrs["team"] == "ml" and resource_attrs["env"] == "p q"

    assert (span["traceId"], span["spanId"]) == (trace, trace[16:])
    assert "parentSpanId" not in span
    assert span["kind"] == 3 and span["name"] == "chat openai/fake-model"
    assert int(span["startTimeUnixNano"]) < int(span["endTimeUnixNano"])
    assert "status" not in span
    row = api.log_row(trace)
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.system"] == a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "openai/fake-model"
    assert a["gen_ai.response.model"] == response.json()["model"]
    assert a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.request.max_tokens"] == 100
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == row["input_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == row["output_tokens"] > 0
    assert a["llmkit.prompt.key"] == "chat"
    assert a["llmkit.prompt.version"] == row["version_number"] == 1
    assert a["llmkit.prompt.sha"] == row["version_sha"]
    assert a["llmkit.source"] == "api"
    assert a["llmkit.trace_id"] == trace
    assert a["llmkit.stream"] is False
    assert a["http.response.status_code"] == 200
    latency_ns = int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])
    assert latency_ns == pytest.approx(row["latency_ms"] * 1e6, abs=1000)
    assert health(api) | {"last_export_at": None} == health(api) | {
        "enabled": True,
        "alive": True,
        "queued": 0,
        "sending": 0,
        "spans_exported": 1,
        "spans_dropped": 0,
        "export_failures": 0,
        "last_error": None,
        "last_export_at": None,
    }


def test_echo_and_streaming_calls_are_spans_too(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    api = traced_api()
    plain = api.complete(ECHO_BODY)
    streamed, events = api.stream_events(
        {"model": "chat", "stream": True, "variables": {"persona": "a cat"}}
    )
    assert plain.status_code == streamed.status_code == 200 and events[-1] == "[DONE]"
    spans = spans_of(api, collector, 2)
    by_trace = {attrs(s)["llmkit.trace_id"]: attrs(s) for s in spans}
    echo = by_trace[plain.headers["x-llmkit-trace-id"]]
    assert echo["gen_ai.request.model"] == "echo" and echo["gen_ai.system"] == "echo"
    assert echo["llmkit.prompt.key"] == "echo" and echo["llmkit.stream"] is False
    stream = by_trace[streamed.headers["x-llmkit-trace-id"]]
    assert stream["llmkit.stream"] is True
    assert stream["llmkit.prompt.key"] == "chat"
    assert stream["gen_ai.request.temperature"] == 0.5
    assert "llmkit.ttft_ms" in stream


def test_a_failed_call_is_an_error_span(traced_api: MakeTracedApi, collector: Collector) -> None:
    api = traced_api()
    api.fake.enqueue(status=500, error="upstream exploded")
    response = api.complete({"model": "static", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    [span] = spans_of(api, collector, 1)
    assert span["status"]["code"] == 2
    assert "upstream exploded" in span["status"]["message"]
    a = attrs(span)
    assert a["error.type"] == "502" and a["http.response.status_code"] == 502
    assert a["llmkit.status"] == "error" and "upstream exploded" in a["llmkit.error"]
    assert a["llmkit.trace_id"] == response.headers["x-llmkit-trace-id"]


def test_the_headers_and_compression_variables_are_used(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    api = traced_api(
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
        OTEL_EXPORTER_OTLP_HEADERS="x-general=no",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="Authorization=Bearer%20s3cret,x-team=prompts",
    )
    assert api.complete(ECHO_BODY).status_code == 200
    spans_of(api, collector, 1)
    [request] = collector.requests
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["x-team"] == "prompts"
    assert request.headers["content-encoding"] == "gzip"  # and the collector read it
    assert "x-general" not in request.headers  # the traces variable replaces the general one


def test_the_traces_endpoint_is_used_as_given(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    api = traced_api(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{collector.url}/custom/path")
    assert api.complete(ECHO_BODY).status_code == 200
    spans_of(api, collector, 1)
    assert [r.path for r in collector.requests] == ["/custom/path"]


def test_a_collector_answering_503_then_200_gets_the_spans_once(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    collector.answer(503, 503)
    api = traced_api()
    trace = api.complete(ECHO_BODY).headers["x-llmkit-trace-id"]
    [span] = spans_of(api, collector, 1)
    assert attrs(span)["llmkit.trace_id"] == trace
    assert [r.status for r in collector.requests] == [503, 503, 200]
    sent = [s["spanId"] for r in collector.requests for s in r.spans]
    assert sent == [span["spanId"]] * 3  # the same batch, tried again
    state = health(api)
    assert state["spans_exported"] == 1 and state["spans_dropped"] == 0
    assert state["retries"] == 2 and state["last_error"] == "HTTP 503"


def test_a_collector_refusing_the_batch_drops_it_without_retrying(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    collector.answer(400)
    api = traced_api()
    assert api.complete(ECHO_BODY).status_code == 200
    assert api.env.ws.runlog.flush(10)
    poll(lambda: health(api)["spans_dropped"] == 1, "the refused span counted as dropped")
    assert [r.status for r in collector.requests] == [400]
    assert health(api)["last_error"] == "HTTP 400"


def test_a_stalled_collector_costs_spans_never_calls(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    collector.stall()
    api = traced_api(
        OTEL_BSP_MAX_QUEUE_SIZE="4",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2",
        OTEL_EXPORTER_OTLP_TIMEOUT="60000",
    )
    calls = 12
    for _ in range(calls):
        assert api.complete(ECHO_BODY).status_code == 200
        assert api.env.ws.runlog.flush(10)
    # Every call was answered while the collector held the first batch unanswered.
    poll(lambda: collector.held == 1, "the exporter's first request to reach the collector")
    assert collector.requests == []
    state = health(api)
    assert state["alive"] and state["queued"] <= 4 and state["sending"] <= 2
    assert state["spans_dropped"] >= calls - 4 - 2
    assert state["spans_dropped"] + state["queued"] + state["sending"] == calls
    collector.release()
    poll(lambda: health(api)["queued"] == 0, "the queued spans sent once released")
    assert len(spans_of(api, collector, calls - state["spans_dropped"])) == (
        calls - state["spans_dropped"]
    )


def test_an_unreachable_collector_drops_and_counts(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    collector.stop()  # nothing listens on its port any more
    api = traced_api(OTEL_BSP_MAX_QUEUE_SIZE="3", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1")
    for _ in range(5):
        assert api.complete(ECHO_BODY).status_code == 200
    assert api.env.ws.runlog.flush(10)
    state = poll(lambda: (s := health(api))["export_failures"] > 0 and s, "a failed export")
    assert state and state["last_error"] in ("ConnectionRefusedError", "URLError")
    assert state["spans_exported"] == 0


def test_a_traceparent_makes_the_span_a_child_of_the_caller(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    api = traced_api()
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {
        "Authorization": f"Bearer {api.env.run_key}",
        "traceparent": f"00-{caller_trace}-{caller_span}-01",
        "tracestate": "vendor=abc",
    }
    response = api.env.client.post("/v1/chat/completions", json=ECHO_BODY, headers=headers)
    streamed_body = {**ECHO_BODY, "stream": True}
    with api.env.client.stream(
        "POST", "/v1/chat/completions", json=streamed_body, headers=headers
    ) as streamed:
        assert "[DONE]" in streamed.read().decode()
    garbled = {"Authorization": headers["Authorization"], "traceparent": "00-not-a-trace"}
    plain = api.env.client.post("/v1/chat/completions", json=ECHO_BODY, headers=garbled)
    assert plain.status_code == 200
    spans = spans_of(api, collector, 3)
    by_trace = {attrs(s)["llmkit.trace_id"]: s for s in spans}
    for answered in (response, streamed):
        own = answered.headers["x-llmkit-trace-id"]
        child = by_trace[own]
        assert (child["traceId"], child["parentSpanId"]) == (caller_trace, caller_span)
        assert child["spanId"] == own[16:] and child["traceState"] == "vendor=abc"
    assert attrs(by_trace[streamed.headers["x-llmkit-trace-id"]])["llmkit.stream"] is True
    root = by_trace[plain.headers["x-llmkit-trace-id"]]
    assert "parentSpanId" not in root and root["traceId"] == plain.headers["x-llmkit-trace-id"]


def test_no_endpoint_means_no_export_and_no_thread(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    api = traced_api(OTEL_EXPORTER_OTLP_ENDPOINT=None, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=None)
    assert api.complete(ECHO_BODY).status_code == 200
    assert api.env.ws.runlog.flush(10)
    assert not [t for t in threading.enumerate() if t.name == "llmkit-otlp-export"]
    assert health(api) == {"enabled": False, "reason": "no OTEL_EXPORTER_OTLP_ENDPOINT is set"}
    assert collector.requests == []


def test_otel_sdk_disabled_turns_export_off(
    traced_api: MakeTracedApi, collector: Collector
) -> None:
    api = traced_api(OTEL_SDK_DISABLED="true")
    assert api.complete(ECHO_BODY).status_code == 200
    assert api.env.ws.runlog.flush(10)
    assert health(api) == {"enabled": False, "reason": "OTEL_SDK_DISABLED is true"}
    assert collector.requests == []


# -- the variables, read -------------------------------------------------------------------


def test_the_general_endpoint_gets_the_traces_path() -> None:
    for base in ("http://otel:4318", "http://otel:4318/"):
        config = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": base}).config
        assert config is not None and config.endpoint == "http://otel:4318/v1/traces"
    config = config_from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://x.example/api/traces",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        }
    ).config
    assert config is not None and config.endpoint == "https://x.example/api/traces"
    assert config.timeout_s == 2.5


def test_a_protocol_other_than_otlp_http_turns_export_off_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    with caplog.at_level(logging.WARNING, logger="llmkit.otlp"):
        exporter, shown = exporter_from_env(env)
    assert exporter is None and shown["enabled"] is False
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in caplog.text
    assert "http/json or http/protobuf" in caplog.text
    traces_only = {**env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "HTTP/Protobuf"}
    config = config_from_env(traces_only).config
    assert config is not None and config.protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT='soon'"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT='-5'"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "'novalue' is not key=value"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "bad name=1"}, "'bad name' is not a valid HTTP header"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "x=a%0D%0Ab"}, "'x' is not a valid HTTP header"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "y=%E2%9C%93"}, "'y' is not a valid HTTP header"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "=x"}, "'=x' is not key=value"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE='0'"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "'zstd' is neither gzip nor none"),
    ],
)
def test_a_bad_value_is_named_and_ignored(env: dict[str, str], named: str) -> None:
    result = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", **env})
    assert result.config is not None
    assert any(named in w for w in result.warnings), result.warnings


def test_an_endpoint_that_is_not_an_http_url_turns_export_off() -> None:
    for endpoint in ("otel:4318", "ftp://otel/", "http://", "http://otel:99999"):
        result = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        assert result.config is None and result.off_because is not None
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in result.off_because


def test_traceparent_parsing() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    caller = parse_traceparent(good)
    assert caller is not None and caller.span_id == "00f067aa0ba902b7"
    assert parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later")
    for bad in (
        "",
        "garbage",
        good + "-extra",  # version 00 has exactly four fields
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ):
        assert parse_traceparent(bad) is None, bad


def test_span_ids_come_from_the_llmkit_trace_id() -> None:
    trace = "0123456789abcdef0123456789abcdef"
    assert span_ids(trace) == (trace, "0123456789abcdef")
    hashed, span = span_ids("imported-run-7")
    assert len(hashed) == 32 and span == hashed[16:] and hashed != "0" * 32
    assert span_ids("imported-run-7") == (hashed, span)


def test_eval_and_judge_calls_are_spans_too(
    tmp_path: Path,
    fake: FakeUpstream,
    collector: Collector,
    otel_env: OtelEnv,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="20")
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY_VALUE)
    config = (
        "models:\n  default: echo\n  judge:\n    model: openai/judge-model\n"
        f"    api_base: {fake.url}\n    api_key_env: {FAKE_KEY_ENV}\n    max_retries: 0\n"
    )
    files = {"llmkit.yaml": config, "prompts/joke.md": JOKE_MD, "evals/joke/c.yaml": JUDGED_CASE}
    repo = EvalRepo.create(tmp_path / "repo", files)
    fake.enqueue(content=json.dumps({"pass": True, "reason": "cats throughout"}))
    with eval_api(repo.root) as api:
        response = api.request("POST", "/v1/ui/prompt-eval-runs/joke/version/1")
        assert response.status_code == 200, response.text
        assert api.app.state.ws.runlog.flush(10)
        poll(lambda: len(collector.spans) >= 2, "the eval's two spans")
    by_source = {attrs(s)["llmkit.source"]: attrs(s) for s in collector.spans}
    assert sorted(by_source) == ["eval", "judge"]
    assert by_source["eval"]["gen_ai.request.model"] == "echo"
    assert by_source["judge"]["gen_ai.request.model"] == "openai/judge-model"
    assert by_source["judge"]["llmkit.prompt.key"] == "joke"


def test_the_protobuf_encoding_says_what_the_json_one_says() -> None:
    row = {
        "trace_id": "0123456789abcdef0123456789abcdef",
        "created_at": "2026-01-02T03:04:05.678Z",
        "latency_ms": 12.5,
        "model": "openai/gpt-x",
        "prompt_key": "ünïcode/key",
        "version_number": 3,
        "status": "error",
        "error": "boom",
        "http_status": 502,
        "input_tokens": -1,  # an int64 below zero takes ten varint bytes
        "cost": 0.25,
        "stream": 1,
        "request": json.dumps({"messages": [], "params": {"temperature": 0.1, "stop": ["x"]}}),
    }
    caller = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a=b")
    spans = [span_of(row, caller), span_of({**row, "trace_id": "imported-1", "status": "ok"})]
    resource = {"service.name": "svc"}
    as_json = json.loads(encoded_request("http/json", resource, spans))
    as_protobuf = decode_export_request(encoded_request("http/protobuf", resource, spans))
    assert as_protobuf == as_json
    [first, second] = as_json["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert attrs(first)["gen_ai.request.stop_sequences"] == ["x"]
    assert attrs(first)["gen_ai.usage.input_tokens"] == -1
    assert first["parentSpanId"] == "00f067aa0ba902b7" and "parentSpanId" not in second


def test_shutdown_sends_what_is_queued(
    tmp_path: Path, fake: FakeUpstream, collector: Collector, otel_env: OtelEnv
) -> None:
    # Only shutdown sends.
    otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="600000")
    build_exec_repo(tmp_path / "repo", fake.url)
    with running_api(tmp_path / "repo") as env:
        run = {"Authorization": f"Bearer {env.run_key}"}
        response = env.client.post("/v1/chat/completions", json=ECHO_BODY, headers=run)
        assert response.status_code == 200
        assert env.ws.runlog.flush(10)
        assert collector.requests == []
    [span] = collector.spans
    assert attrs(span)["llmkit.trace_id"] == response.headers["x-llmkit-trace-id"]


def test_shutdown_does_not_wait_on_a_stalled_collector(
    tmp_path: Path, fake: FakeUpstream, collector: Collector, otel_env: OtelEnv
) -> None:
    collector.stall()
    otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="600000",
        OTEL_EXPORTER_OTLP_TIMEOUT="300",
    )
    build_exec_repo(tmp_path / "repo", fake.url)
    with running_api(tmp_path / "repo") as env:
        run = {"Authorization": f"Bearer {env.run_key}"}
        for _ in range(3):
            response = env.client.post("/v1/chat/completions", json=ECHO_BODY, headers=run)
            assert response.status_code == 200
        assert env.ws.runlog.flush(10)
        app = env.app
    # The lifespan ended: the batch timed out against the stalled collector and was counted.
    state = app.state.otlp_health()
    assert (state["alive"], state["queued"], state["spans_dropped"]) == (False, 0, 3)
    assert state["spans_exported"] == 0 and collector.held >= 1
    assert not [t for t in threading.enumerate() if t.name == "llmkit-otlp-export"]


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("openai/gpt-4o", "openai"),
        ("anthropic/claude-3-5-haiku-latest", "anthropic"),
        ("gemini/gemini-1.5-pro", "gcp.gemini"),
        ("bedrock/anthropic.claude-v2", "aws.bedrock"),
        ("azure/my-deployment", "azure.ai.openai"),
        ("mistral/mistral-large", "mistral_ai"),
        ("echo", "echo"),
    ],
)
def test_the_provider_is_named_as_the_genai_conventions_name_it(model: str, provider: str) -> None:
    row = {"trace_id": "a" * 32, "created_at": "2026-01-02T03:04:05.678Z", "model": model}
    a = attrs(span_of(row))
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == provider


def test_a_real_server_sends_its_spans_when_stopped(
    tmp_path: Path, fake: FakeUpstream, collector: Collector
) -> None:
    build_exec_repo(tmp_path / "repo", fake.url)
    env = {k: v for k, v in clean_env().items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # only the shutdown sends
    }
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with serving(tmp_path / "repo", tmp_path, env) as server:
        headers = {**server.headers(), "traceparent": f"00-{caller_trace}-{caller_span}-01"}
        url = f"{server.v1}/chat/completions"
        response = httpx.post(url, json=ECHO_BODY, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        assert httpx.get(f"{server.url}/healthz", timeout=30).json()["otlp"]["enabled"] is True
        assert collector.requests == []
        assert server.terminate() == 0
    [span] = collector.spans
    assert (span["traceId"], span["parentSpanId"]) == (caller_trace, caller_span)
    assert attrs(span)["llmkit.trace_id"] == response.headers["x-llmkit-trace-id"]


class Recorder:
    """A row sink that keeps what it is told, and checks the rows are readable by then."""

    def __init__(self, runlog: RunLog, fail: bool = False) -> None:
        self.runlog = runlog
        self.fail = fail
        self.queued: list[str] = []
        self.committed: list[str] = []
        self.unreadable: list[str] = []

    def queued_row(self, values: tuple[Any, ...]) -> None:
        self.queued.append(values[COLUMNS.index("trace_id")])
        if self.fail:
            raise RuntimeError("a broken sink")

    def committed_rows(self, rows: list[tuple[Any, ...]]) -> None:
        for values in rows:
            trace = values[COLUMNS.index("trace_id")]
            self.committed.append(trace)
            if self.runlog.get(trace) is None:
                self.unreadable.append(trace)
        if self.fail:
            raise RuntimeError("a broken sink")


def test_row_sinks_see_rows_after_they_commit_and_cannot_cost_one(workspace: Workspace) -> None:
    runlog = workspace.runlog
    sinks = [Recorder(runlog, fail=True), Recorder(runlog)]
    for sink in sinks:
        runlog.add_sink(
            SimpleNamespace(queued=sink.queued_row, committed=sink.committed_rows)  # type: ignore[arg-type]
        )
    runlog.start()
    traces = []
    for i in range(20):
        rec = RunRecord(prompt_key="hello", model="echo", request={"i": i})
        runlog.log(rec)
        traces.append(rec.trace_id)
    assert runlog.flush(10)
    assert sorted(row["trace_id"] for row in runlog.list(page_size=50)) == sorted(traces)
    for sink in sinks:  # the broken one did not keep the other from being told
        assert sink.queued == traces and sorted(sink.committed) == sorted(traces)
        assert sink.unreadable == []


def test_a_partial_success_is_read_and_a_garbled_answer_is_not_fatal() -> None:
    assert rejected_spans("http/json", b'{"partialSuccess": {"rejectedSpans": "3"}}') == 3
    # ExportTraceServiceResponse{partial_success{rejected_spans: 3}}
    assert rejected_spans("http/protobuf", bytes([0x0A, 0x02, 0x08, 0x03])) == 3
    for protocol in CONTENT_TYPES:
        for garbled in (b"", b"{}", b"<html>", b"\xff\xff\xff", b'{"partialSuccess": 7}'):
            assert rejected_spans(protocol, garbled) == 0

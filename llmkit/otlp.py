"""OpenTelemetry spans of logged calls: the caller's W3C trace context kept, and one OTLP span
built and encoded per run-log row (`otlp_config` reads the OTEL_* variables, `otlp_export`
sends the spans).

Spans come from the run log, not from the call: the run-log writer hands each committed batch
to the exporter (a `RowSink`), so every call the run log records (API and UI completions,
prompt executions, eval cases and judge calls) is one span, and exporting costs a call nothing
but a list append. A span says the call in the GenAI semantic conventions (`gen_ai.*`: the
operation, provider, request and response model, tokens, temperature and max tokens, finish
reasons) and in llmkit's own terms (`llmkit.prompt.key`, `.version`, `.sha`, `llmkit.source`,
`llmkit.trace_id`, the HTTP status and error); its times are the row's (`created_at` is the
end, `latency_ms` before it the start), its status ERROR when the call failed.

Ids: a span's trace id is the llmkit trace id (both are 32 hex digits) and its span id the last
16 hex digits of it, so a log row and a tracing UI find each other; an id that is not 32 hex
digits (an imported run's) is hashed into one. A request that carries a W3C `traceparent`
header makes the spans of the calls it causes children of the caller's span: they take the
caller's trace id and parent span id (and its `tracestate`), keep their own span id, and carry
their llmkit trace id in `llmkit.trace_id`. `TraceparentMiddleware` puts the header in a
context variable, which the exporter reads as the row is queued, in the caller's context.

Both OTLP/HTTP encodings are written by llmkit, JSON here and protobuf in `otlp_protobuf` (the
few messages of a trace export request, by hand): the opentelemetry SDK would be a heavy
dependency for one span per call. Nothing here imports litellm.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from llmkit import __version__
from llmkit.otlp_protobuf import encode_export_request, message_fields

# A request or response longer than this is not parsed for the span's parameters, finish
# reasons and response model: the parse would hold the GIL the event loop needs.
MAX_PARSED_CHARS = 256 * 1024
MAX_ATTRIBUTE_CHARS = 4096

SPAN_KIND_CLIENT = 3
STATUS_CODE_ERROR = 2
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")


# -- the caller's trace ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """The span a request came from, as its W3C `traceparent` (and `tracestate`) said."""

    trace_id: str
    span_id: str
    trace_state: str = ""


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "llmkit_otlp_caller", default=None
)


def parse_traceparent(value: str, state: str = "") -> Caller | None:
    """The caller of a `traceparent` header; None when it is not one W3C Trace Context
    accepts (an unknown future version is read by its first four fields, as the spec says)."""
    value = value.strip().lower()
    match = _TRACEPARENT.match(value[:55])
    if match is None or (len(value) > 55 and (match[1] == "00" or value[55] != "-")):
        return None
    version, trace_id, span_id, _flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return Caller(trace_id, span_id, state.strip()[:512])


def current_caller() -> Caller | None:
    """The caller of the request being served in this context, if it said one."""
    return _CALLER.get()


@contextmanager
def calling_from(caller: Caller | None) -> Iterator[None]:
    """Calls logged inside this block are children of `caller`'s span."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


class TraceparentMiddleware:
    """Pure ASGI: remembers a request's `traceparent` for the calls it makes (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = state = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = value
            elif name == b"tracestate":
                state = value
        if parent is None:
            await self.app(scope, receive, send)
            return
        caller = parse_traceparent(
            parent.decode("latin-1"), state.decode("latin-1") if state else ""
        )
        with calling_from(caller):
            await self.app(scope, receive, send)


# -- spans -----------------------------------------------------------------------------------


def span_ids(trace_id: str) -> tuple[str, str]:
    """(OTLP trace id, span id) of a logged call: its trace id and that id's last 16 digits,
    or, for an id that is not 32 hex digits, those of its SHA-256."""
    text = str(trace_id).lower()
    if not _HEX32.match(text) or text[:16] == "0" * 16 or text[16:] == "0" * 16:
        text = hashlib.sha256(str(trace_id).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return text, text[16:]


def _unix_ns(created_at: str) -> int:
    """Of the run log's canonical time (`2026-01-02T03:04:05.678Z`), exactly to the ms."""
    moment = datetime.fromisoformat(created_at.removesuffix("Z")).replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000) * 1_000_000


def _parsed(text: Any) -> Any:
    if not isinstance(text, str) or len(text) > MAX_PARSED_CHARS or text[:1] != "{":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


# litellm's provider names that the GenAI conventions spell otherwise (gen_ai.provider.name's
# well-known values); every other name is sent as litellm says it ("openai", "anthropic", ...).
SEMCONV_PROVIDERS = {
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai_beta": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
    "cohere_chat": "cohere",
}


@functools.lru_cache(maxsize=256)
def _provider(model: str) -> str:
    from llmkit.providers.routing import provider_of

    try:
        name = provider_of(model)
    except Exception:
        name = model.split("/", 1)[0] if "/" in model else "unknown"
    return SEMCONV_PROVIDERS.get(name, name)


# gen_ai.request.* attributes and the call parameters they come from, in order of preference.
REQUEST_ATTRIBUTES = {
    "gen_ai.request.temperature": ("temperature",),
    "gen_ai.request.max_tokens": ("max_tokens", "max_completion_tokens"),
    "gen_ai.request.top_p": ("top_p",),
    "gen_ai.request.seed": ("seed",),
    "gen_ai.request.presence_penalty": ("presence_penalty",),
    "gen_ai.request.frequency_penalty": ("frequency_penalty",),
}


def span_of(row: Mapping[str, Any], caller: Caller | None = None) -> dict[str, Any]:
    """The OTLP/JSON span of one run-log row (a dict by column name)."""
    llmkit_trace = row["trace_id"]
    own_trace, span_id = span_ids(llmkit_trace)
    end_ns = _unix_ns(row["created_at"])
    latency = row.get("latency_ms")
    start_ns = end_ns
    if isinstance(latency, (int, float)) and math.isfinite(latency) and latency > 0:
        start_ns = end_ns - int(latency * 1_000_000)
    model = str(row["model"])
    provider = _provider(model)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": provider,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": row.get("input_tokens"),
        "gen_ai.usage.output_tokens": row.get("output_tokens"),
        "llmkit.prompt.key": row.get("prompt_key"),
        "llmkit.prompt.version": row.get("version_number"),
        "llmkit.prompt.sha": row.get("version_sha"),
        "llmkit.prompt.draft": True if row.get("draft") else None,
        "llmkit.prompt.draft_blob": row.get("draft_blob"),
        "llmkit.source": row.get("source"),
        "llmkit.trace_id": llmkit_trace,
        "llmkit.status": row.get("status"),
        "llmkit.stream": bool(row.get("stream")),
        "llmkit.usage.reasoning_tokens": row.get("reasoning_tokens"),
        "llmkit.cost_usd": row.get("cost"),
        "llmkit.ttft_ms": row.get("ttft_ms"),
        "http.response.status_code": row.get("http_status"),
    }
    request = _parsed(row.get("request"))
    params = request.get("params") if isinstance(request, dict) else None
    if isinstance(params, dict):
        for attribute, names in REQUEST_ATTRIBUTES.items():
            attrs[attribute] = next((params[n] for n in names if params.get(n) is not None), None)
        stop = params.get("stop")
        attrs["gen_ai.request.stop_sequences"] = [stop] if isinstance(stop, str) else stop
    response = _parsed(row.get("response"))
    if isinstance(response, dict):
        attrs["gen_ai.response.model"] = response.get("model")
        attrs["gen_ai.response.id"] = response.get("id")
        choices = response.get("choices")
        if isinstance(choices, list):
            reasons = [c.get("finish_reason") for c in choices if isinstance(c, dict)]
            attrs["gen_ai.response.finish_reasons"] = [r for r in reasons if isinstance(r, str)]
    span: dict[str, Any] = {
        "traceId": caller.trace_id if caller else own_trace,
        "spanId": span_id,
        "name": f"chat {model}",
        "kind": SPAN_KIND_CLIENT,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(end_ns),
    }
    if caller is not None:
        span["parentSpanId"] = caller.span_id
        if caller.trace_state:
            span["traceState"] = caller.trace_state
    if row.get("status") == "error":
        error = row.get("error")
        status_code = row.get("http_status")
        attrs["error.type"] = str(status_code) if status_code else "error"
        attrs["llmkit.error"] = error
        span["status"] = {"code": STATUS_CODE_ERROR, "message": _cut(str(error or "error"))}
    span["attributes"] = attributes(attrs)
    return span


def attributes(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OTLP KeyValues; None values and empty lists are left out."""
    result = []
    for key, value in values.items():
        if value is None:
            continue
        if type(value) is str:  # most of them: skip the type ladder
            encoded: dict[str, Any] | None = {"stringValue": _cut(value)}
        else:
            encoded = _any_value(value)
            if encoded is None:
                continue
        result.append({"key": key, "value": encoded})
    return result


def _any_value(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        # int64, which JSON carries as a string; a larger integer is sent as its text.
        if -(2**63) <= value < 2**63:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value} if math.isfinite(value) else {"stringValue": str(value)}
    if isinstance(value, (list, tuple)):
        items = [v for v in (_any_value(item) for item in value) if v is not None]
        return {"arrayValue": {"values": items}} if items else None
    return {"stringValue": _cut(str(value))}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[: MAX_ATTRIBUTE_CHARS - 1] + "…"


def export_request(resource: Mapping[str, str], spans: list[dict[str, Any]]) -> dict[str, Any]:
    """An ExportTraceServiceRequest in its OTLP/JSON form."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attributes(resource)},
                "scopeSpans": [
                    {"scope": {"name": "llmkit", "version": __version__}, "spans": spans}
                ],
            }
        ]
    }


def encoded_request(
    protocol: str, resource: Mapping[str, str], spans: list[dict[str, Any]]
) -> bytes:
    """The body of an export request in `protocol`'s encoding."""
    request = export_request(resource, spans)
    if protocol == "http/protobuf":
        return encode_export_request(request)
    return json.dumps(request, ensure_ascii=True, allow_nan=False).encode()


def rejected_spans(protocol: str, answer: bytes) -> int:
    """The collector's partialSuccess.rejectedSpans, 0 when it says none (or nothing)."""
    try:
        if protocol == "http/protobuf":
            partial = message_fields(answer).get(1)
            rejected = message_fields(partial).get(1, 0) if isinstance(partial, bytes) else 0
        else:
            data = json.loads(answer) if answer.strip() else {}
            rejected = int((data.get("partialSuccess") or {}).get("rejectedSpans") or 0)
    except (ValueError, TypeError, AttributeError, IndexError):
        return 0
    return max(int(rejected), 0) if isinstance(rejected, int) else 0

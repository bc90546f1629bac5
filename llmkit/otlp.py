"""OpenTelemetry export: one span per logged call, sent over OTLP/HTTP (JSON) to the collector
named by the standard OTEL_* variables.

Spans come from the run log, not from the call: the run-log writer hands each committed batch
to `SpanExporter.committed` (a `RowSink`), which only appends the rows to a bounded queue. An
exporter thread of its own turns them into spans and posts them in batches, with a timeout and
retries with backoff on 429/502/503/504 and connection failures. When the collector is
unreachable or stalled, the queue fills and further spans are dropped and counted: export
costs a call nothing but a list append, and never grows memory without bound. `health()` says
what was exported, dropped and why, for /healthz.

Ids: a span's trace id is the llmkit trace id (both are 32 hex digits) and its span id the last
16 hex digits of it, so `llmkit logs TRACE` and a tracing UI find each other; an id that is not
32 hex digits (an imported run's) is hashed into one. A request that carries a W3C
`traceparent` header makes the spans of the calls it causes children of the caller's span:
they take the caller's trace id and parent span id (and its `tracestate`), keep their own span
id, and say their llmkit trace id in `llmkit.trace_id`. The header is read by
`TraceparentMiddleware` into a context variable, and picked up by `queued`, which the writer
calls in the caller's context as the row is queued.

This module writes the OTLP JSON encoding itself (the opentelemetry SDK is a heavy dependency
for one span per call) and never imports litellm.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from llmkit import __version__
from llmkit.runlog import COLUMNS
from llmkit.runlog_rows import utc_now

logger = logging.getLogger("llmkit.otlp")

# The OpenTelemetry defaults (OTLP exporter and batch span processor).
DEFAULT_TIMEOUT_MS = 10_000
DEFAULT_MAX_QUEUE = 2048
DEFAULT_MAX_BATCH = 512
DEFAULT_SCHEDULE_DELAY_MS = 5000
DEFAULT_SERVICE_NAME = "llmkit"
SUPPORTED_PROTOCOL = "http/json"
# The rows a queued span waits as hold their request and response text: the queue is bounded
# in bytes of that text too, so a stalled collector holds at most this much.
MAX_QUEUED_TEXT_BYTES = 32 * 1024 * 1024
# A request or response longer than this is not parsed for the span's parameters, finish
# reasons and response model: the parse would hold the GIL the event loop needs.
MAX_PARSED_CHARS = 256 * 1024
MAX_ATTRIBUTE_CHARS = 4096
# A batch is tried this many times at most, waiting BACKOFF_S * 2**n (with jitter, capped at
# MAX_BACKOFF_S, or the collector's Retry-After up to that) between tries.
MAX_ATTEMPTS = 5
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Calls whose caller's traceparent is remembered until their rows commit; beyond this the
# oldest are forgotten (their spans become roots of their own traces).
MAX_PENDING_PARENTS = 10_000
# At shutdown, what is queued is sent for at most this long (or the export timeout if shorter).
CLOSE_TIMEOUT_S = 5.0

SPAN_KIND_CLIENT = 3
STATUS_CODE_ERROR = 2
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OtlpConfig:
    """Where and how spans go, from the OTEL_* variables. `endpoint` is the full traces URL."""

    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000
    resource: dict[str, str] = field(default_factory=dict)
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = DEFAULT_MAX_BATCH
    schedule_delay_s: float = DEFAULT_SCHEDULE_DELAY_MS / 1000


@dataclass
class ConfigResult:
    """The config (None: export is off), why it is off, and what in the variables was ignored."""

    config: OtlpConfig | None
    off_because: str | None = None
    warnings: list[str] = field(default_factory=list)


def config_from_env(environ: Mapping[str, str]) -> ConfigResult:
    """Read the standard variables as the OpenTelemetry specification says: a traces-specific
    variable wins over the general one; a value that cannot be used is named in a warning and
    ignored (its default is used), never fatal: telemetry must not stop the server."""
    warnings: list[str] = []

    def get(name: str) -> str | None:
        value = environ.get(name)
        return value.strip() if value is not None and value.strip() else None

    def pick(suffix: str) -> tuple[str, str] | None:
        for name in (f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
            value = get(name)
            if value is not None:
                return name, value
        return None

    if (get("OTEL_SDK_DISABLED") or "").lower() == "true":
        return ConfigResult(None, "OTEL_SDK_DISABLED is true")
    if (get("OTEL_TRACES_EXPORTER") or "otlp").lower() == "none":
        return ConfigResult(None, "OTEL_TRACES_EXPORTER is none")
    traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if traces_endpoint is not None:
        endpoint_var, endpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_endpoint
    elif base_endpoint is not None:
        endpoint_var, endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT", base_endpoint
    else:
        return ConfigResult(None, "no OTEL_EXPORTER_OTLP_ENDPOINT is set")
    if not _is_http_url(endpoint):
        reason = f"{endpoint_var} is not an http(s) URL with a host: {endpoint[:200]!r}"
        return ConfigResult(None, reason, [f"export is off: {reason}"])
    if traces_endpoint is None:
        endpoint += "v1/traces" if endpoint.endswith("/") else "/v1/traces"

    protocol = pick("PROTOCOL")
    if protocol is not None and protocol[1] != SUPPORTED_PROTOCOL:
        name, value = protocol
        if value != "http/protobuf":
            reason = f"{name}={value}: llmkit exports spans only as {SUPPORTED_PROTOCOL}"
            return ConfigResult(None, reason, [f"export is off: {reason}"])
        warnings.append(
            f"{name}={value}: llmkit exports spans only as {SUPPORTED_PROTOCOL}; sending"
            f" {SUPPORTED_PROTOCOL} (the OpenTelemetry Collector's OTLP/HTTP receiver takes"
            f" both; set {name}={SUPPORTED_PROTOCOL} to silence this)"
        )

    headers: dict[str, str] = {}
    header_text = pick("HEADERS")
    if header_text is not None:
        name, text = header_text
        for key, value in _pairs(name, text, warnings).items():
            if not _HEADER_NAME.match(key) or any(c in value for c in "\r\n\0"):
                warnings.append(f"{name}: header {key[:60]!r} is not a valid HTTP header; ignored")
                continue
            headers[key] = value

    timeout_s = DEFAULT_TIMEOUT_MS / 1000
    timeout = pick("TIMEOUT")
    if timeout is not None:
        ms = _positive_number(timeout, warnings, DEFAULT_TIMEOUT_MS)
        timeout_s = ms / 1000

    resource = {"service.name": DEFAULT_SERVICE_NAME, "service.version": __version__}
    resource_text = get("OTEL_RESOURCE_ATTRIBUTES")
    if resource_text is not None:
        resource.update(_pairs("OTEL_RESOURCE_ATTRIBUTES", resource_text, warnings))
    service = get("OTEL_SERVICE_NAME")
    if service is not None:
        resource["service.name"] = service

    def bsp(name: str, default: int) -> int:
        value = get(name)
        if value is None:
            return default
        return int(_positive_number((name, value), warnings, default))

    max_queue = bsp("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE)
    max_batch = min(bsp("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_MAX_BATCH), max_queue)
    delay_ms = bsp("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS)
    config = OtlpConfig(
        endpoint=endpoint,
        headers=headers,
        timeout_s=timeout_s,
        resource=resource,
        max_queue=max_queue,
        max_batch=max_batch,
        schedule_delay_s=delay_ms / 1000,
    )
    return ConfigResult(config, warnings=warnings)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not one)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _pairs(name: str, text: str, warnings: list[str]) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded values (the OTEL list form); a bad entry is named."""
    pairs: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            warnings.append(f"{name}: {entry.strip()[:60]!r} is not key=value; ignored")
            continue
        pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _positive_number(pair: tuple[str, str], warnings: list[str], default: float) -> float:
    name, value = pair
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        warnings.append(f"{name}={value[:60]!r} is not a positive number; using {default:g}")
        return default
    return number


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
    moment = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000) * 1_000_000


def _parsed(text: Any) -> Any:
    if not isinstance(text, str) or len(text) > MAX_PARSED_CHARS or text[:1] != "{":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _provider(model: str) -> str:
    from llmkit.providers.routing import provider_of

    try:
        return provider_of(model)
    except Exception:
        return model.split("/", 1)[0] if "/" in model else "unknown"


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
        encoded = _any_value(value)
        if encoded is not None:
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


# -- the exporter ----------------------------------------------------------------------------


class ExportFailed(Exception):
    """An attempt to post a batch failed; `retryable` says whether trying again may work."""

    def __init__(self, reason: str, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


_Pending = tuple[tuple[Any, ...], Caller | None]


class SpanExporter:
    """A `RowSink` of the run log that sends one span per committed row (see the module)."""

    def __init__(self, config: OtlpConfig) -> None:
        self.config = config
        self._trace_index = COLUMNS.index("trace_id")
        self._text_indexes = tuple(COLUMNS.index(name) for name in ("request", "response"))
        self._lock = threading.Lock()
        self._pending: deque[tuple[_Pending, int]] = deque()
        self._pending_bytes = 0
        self._parents: dict[str, Caller] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._sending = 0
        # Health: only the exporter thread updates these (and `committed`, under the lock,
        # the queue's drop count).
        self.spans_exported = 0
        self.spans_dropped = 0
        self.spans_rejected = 0
        self.export_failures = 0
        self.retries = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.last_export_at: str | None = None

    # The run log's side: never blocks, never raises

    def queued(self, values: tuple[Any, ...]) -> None:
        caller = _CALLER.get()
        if caller is None:
            return
        with self._lock:
            if len(self._parents) >= MAX_PENDING_PARENTS:
                self._parents.pop(next(iter(self._parents)))
            self._parents[values[self._trace_index]] = caller

    def committed(self, rows: list[tuple[Any, ...]]) -> None:
        config = self.config
        parents = self._parents
        with self._lock:
            for values in rows:
                caller = parents.pop(values[self._trace_index], None) if parents else None
                size = sum(len(values[i]) for i in self._text_indexes if isinstance(values[i], str))
                if (
                    len(self._pending) >= config.max_queue
                    or self._pending_bytes + size > MAX_QUEUED_TEXT_BYTES
                ):
                    self.spans_dropped += 1
                    continue
                self._pending.append(((values, caller), size))
                self._pending_bytes += size
            full = len(self._pending) >= config.max_batch
        if full:
            self._wake.set()

    # Starting and stopping

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="llmkit-otlp-export", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, trying until `timeout` (default: the export timeout) runs out,
        then stop; what is left then is dropped and counted."""
        thread = self._thread
        if thread is None or self._stop.is_set():
            return
        wait = min(self.config.timeout_s, CLOSE_TIMEOUT_S) if timeout is None else timeout
        self._deadline = time.monotonic() + wait
        self._stop.set()
        self._wake.set()
        thread.join(wait + 1)
        if thread.is_alive():
            logger.warning("OTLP export: still sending after %.1f s at shutdown; left behind", wait)

    def health(self) -> dict[str, Any]:
        """Counters for /healthz; errors named by kind (an HTTP status, an exception type),
        never by a message, which could quote the collector's URL or answer."""
        thread = self._thread
        return {
            "enabled": True,
            "alive": thread is not None and thread.is_alive(),
            "queued": len(self._pending),
            "sending": self._sending,
            "spans_exported": self.spans_exported,
            "spans_dropped": self.spans_dropped,
            "spans_rejected": self.spans_rejected,
            "export_failures": self.export_failures,
            "retries": self.retries,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_export_at": self.last_export_at,
        }

    # The exporter thread

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self.config.schedule_delay_s)
                self._wake.clear()
            batch = self._take()
            if batch:
                try:
                    self._export(batch)
                except Exception as exc:  # a bug must cost spans, never the thread
                    self._failed(f"{type(exc).__name__}", len(batch), dropped=True)
                    logger.exception("OTLP export: a batch of %d spans failed", len(batch))
                finally:
                    self._sending = 0
                continue
            if stopping:
                return

    def _take(self) -> list[_Pending]:
        with self._lock:
            count = min(len(self._pending), self.config.max_batch)
            taken = [self._pending.popleft() for _ in range(count)]
            self._pending_bytes -= sum(size for _, size in taken)
            self._sending = len(taken)
        return [item for item, _ in taken]

    def _export(self, batch: list[_Pending]) -> None:
        spans = []
        for values, caller in batch:
            try:
                spans.append(span_of(dict(zip(COLUMNS, values)), caller))
            except Exception as exc:
                self._failed(f"span: {type(exc).__name__}", 1, dropped=True)
        if not spans:
            return
        body = json.dumps(
            export_request(self.config.resource, spans), ensure_ascii=True, allow_nan=False
        ).encode()
        attempt = 0
        while True:
            attempt += 1
            timeout = self.config.timeout_s
            if self._deadline is not None:
                timeout = min(timeout, self._deadline - time.monotonic())
                if timeout <= 0:
                    self._failed("shutdown", len(spans), dropped=True)
                    return
            try:
                rejected = self._post(body, timeout)
            except ExportFailed as exc:
                if not exc.retryable or attempt >= MAX_ATTEMPTS:
                    self._failed(exc.reason, len(spans), dropped=True)
                    logger.warning(
                        "OTLP export: %d spans dropped after %d attempt(s): %s",
                        len(spans),
                        attempt,
                        exc.reason,
                    )
                    return
                self._failed(exc.reason, len(spans), dropped=False)
                delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (attempt - 1))
                delay = delay * (0.5 + random.random() / 2)
                if exc.retry_after_s is not None:
                    delay = min(MAX_BACKOFF_S, max(delay, exc.retry_after_s))
                self.retries += 1
                self._stop.wait(delay)  # close() cuts the wait short; its deadline bounds the rest
                continue
            self.spans_exported += len(spans) - rejected
            self.spans_rejected += rejected
            self.last_export_at = utc_now()
            return

    def _post(self, body: bytes, timeout: float) -> int:
        """Post one request; the number of spans the collector said it rejected."""
        headers = {**self.config.headers, "Content-Type": "application/json"}
        request = urllib.request.Request(
            self.config.endpoint, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = response.read(1024 * 1024)
        except urllib.error.HTTPError as exc:
            status = exc.code
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            retryable = status in RETRYABLE_STATUSES
            raise ExportFailed(f"HTTP {status}", retryable, retry_after) from None
        except (OSError, ValueError) as exc:  # refused, reset, timed out, TLS, bad URL
            reason = getattr(exc, "reason", None)
            cause = reason if isinstance(reason, BaseException) else exc
            raise ExportFailed(type(cause).__name__, True) from None
        return _rejected_spans(answer)

    def _failed(self, reason: str, count: int, *, dropped: bool) -> None:
        self.export_failures += 1
        self.last_error = reason
        self.last_error_at = utc_now()
        if dropped:
            with self._lock:
                self.spans_dropped += count


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _rejected_spans(answer: bytes) -> int:
    """The collector's partialSuccess.rejectedSpans, 0 when it says none (or nothing)."""
    try:
        data = json.loads(answer) if answer.strip() else {}
        rejected = int((data.get("partialSuccess") or {}).get("rejectedSpans") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0
    return max(rejected, 0)


def exporter_from_env(environ: Mapping[str, str]) -> tuple[SpanExporter | None, dict[str, Any]]:
    """The exporter the variables ask for (not started), or None; and the health shown when
    it is off. Each ignored value and the reason export is off are logged once, here."""
    result = config_from_env(environ)
    for warning in result.warnings:
        logger.warning("OTLP export: %s", warning)
    if result.config is None:
        return None, {"enabled": False, "reason": result.off_because}
    logger.info("OTLP export: spans go to %s", _shown_endpoint(result.config.endpoint))
    return SpanExporter(result.config), {"enabled": True}


def _shown_endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

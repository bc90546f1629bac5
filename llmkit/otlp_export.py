"""The span exporter: a `RowSink` of the run log and the thread that posts its spans.

`committed` (on the run-log writer's thread) only appends rows to a queue bounded in spans
(OTEL_BSP_MAX_QUEUE_SIZE) and in the bytes of text they hold; a row that does not fit is
dropped and counted. The exporter thread wakes every OTEL_BSP_SCHEDULE_DELAY (or when a batch
is full), turns up to OTEL_BSP_MAX_EXPORT_BATCH_SIZE rows into spans (`llmkit.otlp.span_of`)
and posts them, each try bounded by the export timeout; 429, 502, 503, 504 and connection
failures are tried again with backoff (or the collector's Retry-After), MAX_ATTEMPTS times at
most, any other answer drops the batch. While it waits, new rows fill the queue and the
overflow is dropped: a stalled collector costs spans, never memory or a call.
"""

from __future__ import annotations

import gzip
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from llmkit.otlp import Caller, current_caller, encoded_request, rejected_spans, span_of
from llmkit.otlp_config import CONTENT_TYPES, OtlpConfig, config_from_env
from llmkit.runlog_record import COLUMNS
from llmkit.runlog_rows import utc_now

logger = logging.getLogger("llmkit.otlp")

# The rows a queued span waits as hold their request and response text: the queue is bounded
# in bytes of that text too, so a stalled collector holds at most this much.
MAX_QUEUED_TEXT_BYTES = 32 * 1024 * 1024
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
        self._parents: OrderedDict[str, Caller] = OrderedDict()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._sending = 0
        # Health: only the exporter thread updates these, but for `spans_dropped`, which
        # `committed` counts too (both under the lock).
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
        caller = current_caller()
        if caller is None:
            return
        with self._lock:
            if len(self._parents) >= MAX_PENDING_PARENTS:
                self._parents.popitem(last=False)
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
            # A full batch goes at once (a backlog drains back to back); a partial one waits
            # out the schedule delay for company.
            if not stopping and len(self._pending) < self.config.max_batch:
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
        body = encoded_request(self.config.protocol, self.config.resource, spans)
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=5)
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
        content_type = CONTENT_TYPES[self.config.protocol]
        headers = {**self.config.headers, "Content-Type": content_type}
        if self.config.gzip:
            headers["Content-Encoding"] = "gzip"
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
        return rejected_spans(self.config.protocol, answer)

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

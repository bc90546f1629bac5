"""The OTEL_* variables read into an OtlpConfig: where spans go, how (OTLP/HTTP, JSON or
protobuf), with which headers and resource, and the batch processor's queue, batch and delay.
Export is off unless an endpoint is set. A value that cannot be used is named in a warning and
its default used (a bad endpoint or protocol turns export off instead): telemetry never stops
the server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from llmkit import __version__

# The OpenTelemetry defaults (OTLP exporter and batch span processor).
DEFAULT_TIMEOUT_MS = 10_000
DEFAULT_MAX_QUEUE = 2048
DEFAULT_MAX_BATCH = 512
DEFAULT_SCHEDULE_DELAY_MS = 5000
DEFAULT_SERVICE_NAME = "llmkit"
CONTENT_TYPES = {"http/json": "application/json", "http/protobuf": "application/x-protobuf"}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


@dataclass(frozen=True)
class OtlpConfig:
    """Where and how spans go, from the OTEL_* variables. `endpoint` is the full traces URL."""

    endpoint: str
    protocol: str = "http/json"
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000
    resource: dict[str, str] = field(default_factory=dict)
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = DEFAULT_MAX_BATCH
    schedule_delay_s: float = DEFAULT_SCHEDULE_DELAY_MS / 1000
    gzip: bool = False


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

    protocol = "http/json"
    asked = pick("PROTOCOL")
    if asked is not None:
        name, protocol = asked[0], asked[1].lower()
        if protocol not in CONTENT_TYPES:
            reason = (
                f"{name}={asked[1]}: llmkit exports spans over OTLP/HTTP only"
                f" ({' or '.join(CONTENT_TYPES)})"
            )
            return ConfigResult(None, reason, [f"export is off: {reason}"])

    headers: dict[str, str] = {}
    header_text = pick("HEADERS")
    if header_text is not None:
        name, text = header_text
        for key, value in _pairs(name, text, warnings).items():
            if not _HEADER_NAME.match(key) or not _header_value(value):
                warnings.append(f"{name}: header {key[:60]!r} is not a valid HTTP header; ignored")
                continue
            headers[key] = value

    timeout_s = DEFAULT_TIMEOUT_MS / 1000
    timeout = pick("TIMEOUT")
    if timeout is not None:
        ms = _positive_number(timeout, warnings, DEFAULT_TIMEOUT_MS)
        timeout_s = ms / 1000

    gzip = False
    compression = pick("COMPRESSION")
    if compression is not None:
        name, value = compression
        gzip = value.lower() == "gzip"
        if value.lower() not in ("gzip", "none"):
            warnings.append(f"{name}={value[:60]!r} is neither gzip nor none; sending uncompressed")

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
        return max(1, int(_positive_number((name, value), warnings, default)))

    max_queue = bsp("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE)
    max_batch = min(bsp("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_MAX_BATCH), max_queue)
    delay_ms = bsp("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS)
    config = OtlpConfig(
        endpoint=endpoint,
        protocol=protocol,
        headers=headers,
        timeout_s=timeout_s,
        resource=resource,
        max_queue=max_queue,
        max_batch=max_batch,
        schedule_delay_s=delay_ms / 1000,
        gzip=gzip,
    )
    return ConfigResult(config, warnings=warnings)


def _header_value(value: str) -> bool:
    """Whether HTTP/1.1 carries it as is: latin-1, no line breaks or NULs."""
    return all(" " <= c <= "\xff" and c != "\x7f" or c == "\t" for c in value)


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

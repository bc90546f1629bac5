"""The protobuf encoding of an OTLP trace export request, written out by hand for its few
messages (field numbers from opentelemetry/proto/{collector/trace,trace,common,resource}/v1),
from the request's OTLP/JSON form; and just enough decoding to read a collector's answer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative int64 is its two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _pb_bytes(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _pb_text(number: int, text: str) -> bytes:
    # Protobuf strings are UTF-8: a lone surrogate becomes U+FFFD's stand-in "?".
    return _pb_bytes(number, text.encode("utf-8", "replace"))


def _pb_value(value: Mapping[str, Any]) -> bytes:
    """An AnyValue: string 1, bool 2, int 3, double 4, array 5."""
    [(kind, inner)] = value.items()
    if kind == "stringValue":
        return _pb_text(1, inner)
    if kind == "boolValue":
        return _tag(2, 0) + _varint(1 if inner else 0)
    if kind == "intValue":
        return _tag(3, 0) + _varint(int(inner))
    if kind == "doubleValue":
        return _tag(4, 1) + struct.pack("<d", inner)
    items = b"".join(_pb_bytes(1, _pb_value(item)) for item in inner["values"])
    return _pb_bytes(5, items)


def _pb_attributes(number: int, values: list[dict[str, Any]]) -> bytes:
    return b"".join(
        _pb_bytes(number, _pb_text(1, kv["key"]) + _pb_bytes(2, _pb_value(kv["value"])))
        for kv in values
    )


def _pb_span(span: Mapping[str, Any]) -> bytes:
    out = _pb_bytes(1, bytes.fromhex(span["traceId"])) + _pb_bytes(2, bytes.fromhex(span["spanId"]))
    if span.get("traceState"):
        out += _pb_text(3, span["traceState"])
    if span.get("parentSpanId"):
        out += _pb_bytes(4, bytes.fromhex(span["parentSpanId"]))
    out += _pb_text(5, span["name"]) + _tag(6, 0) + _varint(span["kind"])
    out += _tag(7, 1) + struct.pack("<Q", int(span["startTimeUnixNano"]))
    out += _tag(8, 1) + struct.pack("<Q", int(span["endTimeUnixNano"]))
    out += _pb_attributes(9, span["attributes"])
    status = span.get("status")
    if status:
        out += _pb_bytes(15, _pb_text(2, status["message"]) + _tag(3, 0) + _varint(status["code"]))
    return out


def encode_export_request(request: Mapping[str, Any]) -> bytes:
    """An ExportTraceServiceRequest, given in its OTLP/JSON form, as protobuf."""
    out = b""
    for resource_spans in request["resourceSpans"]:
        body = _pb_bytes(1, _pb_attributes(1, resource_spans["resource"]["attributes"]))
        for scope_spans in resource_spans["scopeSpans"]:
            scope = scope_spans["scope"]
            inner = _pb_bytes(1, _pb_text(1, scope["name"]) + _pb_text(2, scope["version"]))
            inner += b"".join(_pb_bytes(2, _pb_span(span)) for span in scope_spans["spans"])
            body += _pb_bytes(2, inner)
        out += _pb_bytes(1, body)
    return out


def message_fields(data: bytes) -> dict[int, Any]:
    """The last value of each field of a message: varints as ints, length-delimited as bytes;
    enough to read a collector's ExportTraceServiceResponse."""
    fields: dict[int, Any] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], i = _read_varint(data, i)
        elif wire_type == 2:
            size, i = _read_varint(data, i)
            fields[number], i = data[i : i + size], i + size
        elif wire_type in (1, 5):
            i += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire_type} not expected here")
    return fields


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i

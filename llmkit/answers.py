"""How an answer is put together and checked: a stream's deltas merged into the text and tool
calls the run log keeps (within a cap), a JSON-mode stream held whole until it is checked, the
chunks a client gets, the usage of every attempt summed, and whether an answer is the JSON (and
matches the schema) that JSON mode asked for."""

from __future__ import annotations

import json
import time
from typing import Any

from llmkit import providers
from llmkit.errors import clipped

# What a stream keeps of its answer for the run log when no cap is given (the rest is only
# counted): an answer held for a slow client must not cost memory in proportion to its length.
# The executor passes the run log's own field cap, so a stream keeps what its row can hold.
LOGGED_TEXT_MAX_CHARS = 1024 * 1024
# What one buffered JSON-mode chunk costs beyond its text, in the buffer's byte budget.
CHUNK_COST_BYTES = 512


class Answer:
    """The text and tool calls of a streamed answer, merged from its deltas. Keeps at most
    `limit` characters (what comes after is only counted), so that memory is bounded."""

    def __init__(self, limit: int = LOGGED_TEXT_MAX_CHARS) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.parts: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                kept = self._kept(content)
                if kept:
                    self.parts.append(kept)
                    if len(self.parts) > 512:
                        self.parts = ["".join(self.parts)]
            for call in delta.get("tool_calls") or ():
                self._merge_tool_call(call)

    def _kept(self, text: str) -> str:
        room = self.limit - self.size
        if len(text) > room:
            self.dropped += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        self.size += len(text)
        return text

    def _merge_tool_call(self, delta: dict[str, Any]) -> None:
        index = delta.get("index", 0)
        if not isinstance(index, int) or not 0 <= index < 128:
            return
        while len(self.tool_calls) <= index:
            self.tool_calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        call = self.tool_calls[index]
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        call["function"]["name"] += self._kept(function.get("name") or "")
        call["function"]["arguments"] += self._kept(function.get("arguments") or "")

    def text(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"[... {self.dropped} more characters not kept]"
        return text


class StreamState:
    """What a stream has carried so far, for the run log: the answer as sent to the client
    (or, for a refused JSON-mode answer, as received), usage and time to first token."""

    def __init__(self, limit: int = LOGGED_TEXT_MAX_CHARS) -> None:
        self.limit = limit
        self.ttft_ms: float | None = None
        # Usage chunks of attempts that were retried (JSON mode): their tokens were spent too.
        self.spent: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.reset()

    def reset(self) -> None:
        if self.usage is not None:
            self.spent.append(self.usage)
        self.answer = Answer(self.limit)
        self.usage = None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.answer.tool_calls

    def text(self) -> str:
        return self.answer.text()

    def usage_chunks(self) -> list[dict[str, Any]]:
        return [*self.spent, *([self.usage] if self.usage is not None else [])]

    def received(self, chunk: dict[str, Any], key: str, started: float) -> None:
        chunk["model"] = key
        if chunk.get("usage"):
            # A holder of its own: the chunk loses its usage when the client did not ask for it.
            self.usage = {"usage": chunk["usage"]}
        if self.ttft_ms is None:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    self.ttft_ms = (time.perf_counter() - started) * 1000
                    break

    def sent(self, chunk: dict[str, Any]) -> None:
        self.answer.add(chunk)


class JsonBuffer:
    """A JSON-mode answer held whole until it is checked. Consecutive chunks that carry only
    text (content, or a tool call's arguments) are merged into the first of them, so that the
    memory held follows the answer's length rather than its count of chunks; `add` says False
    once the estimate passes `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: list[dict[str, Any]] = []
        # The text pieces of the last chunk, while it can take more, and where they belong.
        self._pieces: list[str] = []
        self._slot: tuple[Any, ...] | None = None

    def add(self, chunk: dict[str, Any]) -> bool:
        slot, text = _text_slot(chunk)
        if slot is not None and slot == self._slot:
            self._pieces.append(text)
            self.size += len(text)
        else:
            self._seal()
            self._chunks.append(chunk)
            self.size += CHUNK_COST_BYTES + _text_size(chunk)
            self._slot, self._pieces = slot, [text]
        return self.size <= self.limit

    def _seal(self) -> None:
        if self._slot is not None and len(self._pieces) > 1:
            _set_text(self._chunks[-1], "".join(self._pieces))
        self._slot, self._pieces = None, []

    def chunks(self) -> list[dict[str, Any]]:
        self._seal()
        return self._chunks


def _text_slot(chunk: dict[str, Any]) -> tuple[tuple[Any, ...] | None, str]:
    """(where, text) for a chunk that carries nothing but text: one choice whose delta is only
    content (and the same role, which some servers repeat), or only one tool call's arguments;
    (None, "") for any other chunk."""
    choices = chunk.get("choices")
    if chunk.get("usage") or not isinstance(choices, list) or len(choices) != 1:
        return None, ""
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict) or choice.get("finish_reason") or choice.get("logprobs"):
        return None, ""
    index = choice.get("index", 0)
    fields = {k for k, v in delta.items() if v is not None}
    content = delta.get("content")
    if fields <= {"content", "role"} and isinstance(content, str):
        return (index, "content", delta.get("role")), content
    calls = delta.get("tool_calls")
    if fields == {"tool_calls"} and isinstance(calls, list) and len(calls) == 1:
        call = calls[0]
        function = call.get("function") if isinstance(call, dict) else None
        if (
            isinstance(function, dict)
            and set(call) == {"index", "function"}
            and set(function) == {"arguments"}
            and isinstance(function["arguments"], str)
        ):
            return (index, "tool", call["index"]), function["arguments"]
    return None, ""


def _text_size(chunk: dict[str, Any]) -> int:
    size = 0
    for choice in chunk.get("choices") or ():
        delta = (choice.get("delta") if isinstance(choice, dict) else None) or {}
        content = delta.get("content")
        size += len(content) if isinstance(content, str) else 0
        for call in delta.get("tool_calls") or ():
            function = (call.get("function") if isinstance(call, dict) else None) or {}
            size += sum(len(v) for v in function.values() if isinstance(v, str))
    return size


def json_chunks_problem(
    chunks: list[dict[str, Any]], limit: int, schema: dict[str, Any] | None
) -> str | None:
    answer = Answer(limit)
    for chunk in chunks:
        answer.add(chunk)
    return None if answer.tool_calls else json_text_problem(answer.text(), schema)


def _set_text(chunk: dict[str, Any], text: str) -> None:
    delta = chunk["choices"][0]["delta"]
    if "content" in delta:
        delta["content"] = text
    else:
        delta["tool_calls"][0]["function"]["arguments"] = text


def for_client(chunk: dict[str, Any], include_usage: bool) -> bool:
    """Whether the client gets this chunk; as OpenAI does, usage only with include_usage (the
    provider is always asked for it, for the run log)."""
    if include_usage:
        return True
    chunk.pop("usage", None)
    return bool(chunk.get("choices"))


def total_usage(holders: list[dict[str, Any]]) -> providers.Usage:
    parts = [providers.usage_of(h) for h in holders]
    return providers.Usage(
        input_tokens=sum(p.input_tokens for p in parts),
        output_tokens=sum(p.output_tokens for p in parts),
        reasoning_tokens=sum(p.reasoning_tokens for p in parts),
    )


def json_problem(response: dict[str, Any], schema: dict[str, Any] | None) -> str | None:
    for choice in response.get("choices") or ():
        message = choice.get("message") or {}
        if message.get("tool_calls"):
            continue
        problem = json_text_problem(message.get("content") or "", schema)
        if problem:
            return problem
    return None


def json_text_problem(text: str, schema: dict[str, Any] | None) -> str | None:
    try:
        value = json.loads(text)
    except ValueError as exc:  # also an integer past Python's digit limit
        shown = clipped(text, 80)
        why = f"{exc.msg} at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else exc
        return f"output is not JSON ({why}): {shown!r}"
    except RecursionError:
        return "output is JSON nested too deeply to read"
    if schema:
        import jsonschema

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            return f"output does not match json_schema at {where}: {exc.message}"
        except jsonschema.SchemaError as exc:
            return f"the prompt's json_schema is invalid: {exc.message}"
        except RecursionError:
            return "output is nested too deeply to check against json_schema"
    return None

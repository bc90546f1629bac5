"""The offline `echo` model: it answers with the conversation it was sent, so a test or a first
run can see exactly what reached the provider, with no key and no network.

- Plain: one line per message, `role: content`.
- JSON mode: the last user message if it is a JSON object, else `{"messages": [...]}`.
- Tools: when the request has tools and the conversation ends with a user message
  `call:NAME {"json": "arguments"}`, a call to tool NAME with those arguments.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from llmkit.errors import BadRequest
from llmkit.providers.base import ProviderCall
from llmkit.providers.transport import Chunks, Provider, Target

CALL_PREFIX = "call:"
CALL_PATTERN = re.compile(r"call:([\w.-]+)\s*(.*)", re.DOTALL)
JSON_FORMATS = ("json_object", "json_schema")
STREAM_PIECES = 3


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                parts.append(str(part.get("text", f"[{part.get('type', 'part')}]")))
            else:
                parts.append(str(part))
        return " ".join(parts)
    return json.dumps(content)


def _line(message: dict[str, Any]) -> str:
    text = _text(message.get("content"))
    functions = [c.get("function") or {} for c in message.get("tool_calls") or []]
    calls = [f"{CALL_PREFIX}{f.get('name', '')} {f.get('arguments', '')}" for f in functions]
    return f"{message.get('role', '')}: " + " ".join(p for p in [text, *calls] if p)


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return None


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _tool_call(messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any] | None:
    if not params.get("tools") or not messages or messages[-1].get("role") != "user":
        return None
    match = CALL_PATTERN.match(_text(messages[-1].get("content")).strip())
    if match is None:
        return None
    name, raw_args = match.group(1), match.group(2).strip()
    try:
        args = json.loads(raw_args) if raw_args else {}
    except ValueError:
        raise BadRequest(
            f"echo: arguments after {CALL_PREFIX}{name} are not JSON: {raw_args!r}"
        ) from None
    if not isinstance(args, dict):
        raise BadRequest(f"echo: arguments after {CALL_PREFIX}{name} must be a JSON object")
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": _compact(args)},
    }


def _answer_text(messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in JSON_FORMATS:
        last = _last_user_text(messages)
        try:
            parsed = json.loads(last) if last is not None else None
        except ValueError:
            parsed = None
        return _compact(parsed if isinstance(parsed, dict) else {"messages": messages})
    return "\n".join(_line(m) for m in messages)


def _usage(messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
    prompt = sum(len(_line(m).split()) - 1 for m in messages)
    completion = len(answer.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def complete(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    tool_call = _tool_call(messages, params)
    message: dict[str, Any] = {"role": "assistant"}
    if tool_call:
        message["content"] = None
        message["tool_calls"] = [tool_call]
        answer = tool_call["function"]["arguments"]
    else:
        answer = _answer_text(messages, params)
        message["content"] = answer
    return {
        "id": f"chatcmpl-echo-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_call else "stop",
            }
        ],
        "usage": _usage(messages, answer),
    }


def _pieces(text: str, count: int) -> list[str]:
    """`text` cut at word boundaries into at most `count` pieces that join back to it."""
    words = re.findall(r"\s*\S+\s*|\s+", text)
    if not words:
        return []
    size = -(-len(words) // count)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def chunks_of(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """A completion as the chunks a streaming provider would send, usage chunk last."""
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        out = {
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    def delta(body: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chunk([{"index": 0, "delta": body, "finish_reason": finish}])

    out = [delta({"role": "assistant", "content": ""})]
    pieces = _pieces(message.get("content") or "", STREAM_PIECES)
    out += [delta({"content": piece}) for piece in pieces]
    for index, call in enumerate(message.get("tool_calls") or []):
        out.append(
            delta(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        out.append(
            delta(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "function": {"arguments": call["function"]["arguments"]},
                        }
                    ]
                }
            )
        )
    out.append(delta({}, choice["finish_reason"]))
    out.append(chunk([], completion["usage"]))
    return out


async def stream(
    model: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> AsyncGenerator[dict[str, Any], None]:
    for chunk in chunks_of(complete(model, messages, params)):
        yield chunk


class EchoTransport:
    """The `echo` model as a transport: local, so it needs no key, base URL or network."""

    name = "echo"
    local = True
    providers: tuple[Provider, ...] = (Provider("echo", bare_names=("echo",)),)

    def serves(self, provider: str, api_base: str | None, *, forced: bool = False) -> bool:
        if provider == "echo":
            return True
        if forced:
            raise BadRequest(f"via='echo' serves only the echo model, not {provider} models")
        return False

    def base_url(self, provider: str, api_base: str | None) -> str | None:
        return None

    async def complete(self, target: Target, call: ProviderCall, timeout: float) -> dict[str, Any]:
        return complete(target.model, call.messages, call.params)

    def stream(self, target: Target, call: ProviderCall, timeout: float) -> Chunks:
        return stream(target.model, call.messages, call.params)

    async def aclose(self) -> None:
        pass


ECHO = EchoTransport()

"""Executing a prompt: variables -> messages -> parameters -> provider -> run log.

The request is OpenAI's chat-completions body with the prompt key (optionally pinned,
`key@7`, `key@3fa9c1e`, `key@production`) as `model`. Caller text is never rendered as a
template: only the prompt's own sections are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextvars import copy_context
from dataclasses import dataclass, field
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

from llmkit import providers
from llmkit.budgets import MAX_JSON_DEPTH, Limits, json_too_deep
from llmkit.errors import BadRequest, ClientGone, LlmkitError, RunLogUnavailable, UpstreamError
from llmkit.models import ModelRegistry, ModelTarget
from llmkit.promptfile import PromptFile, path_for_key
from llmkit.render import render_messages, renders_quickly
from llmkit.runlog import RunLog
from llmkit.runlog_record import RunRecord, new_trace_id, version_columns
from llmkit.versions import Version, label
from llmkit.workspace import Workspace

logger = logging.getLogger(__name__)

# Request fields that override or extend the prompt's settings.
REQUEST_PARAMS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "parallel_tool_calls",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
)
# Frontmatter fields sent to the provider.
PROMPT_PARAMS = (
    "temperature",
    "max_tokens",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "reasoning_effort",
)
# Everything else a client may send; anything outside these is refused by name.
OTHER_FIELDS = {
    "model",
    "messages",
    "variables",
    "model_override",
    "stream",
    "stream_options",
    "metadata",
    "store",
}
MAX_MODEL_NAME = 300
JSON_FORMATS = ("json_object", "json_schema")
WARNING_HEADER = "x-llmkit-warning"
# What a stream keeps of its answer for the run log when no cap is given (the rest is only
# counted): an answer held for a slow client must not cost memory in proportion to its length.
# The executor passes the run log's own field cap, so a stream keeps what its row can hold.
LOGGED_TEXT_MAX_CHARS = 1024 * 1024
# What one buffered JSON-mode chunk costs beyond its text, in the buffer's byte budget.
CHUNK_COST_BYTES = 512
# Threads that prepare calls (render templates, resolve pinned refs) for the API. A render
# that burns its whole CPU budget holds one of them; the event loop never waits on any.
PREPARE_THREADS = 8
T = TypeVar("T")


@dataclass
class Execution:
    """A prepared call: the version resolved, the messages rendered, the parameters merged."""

    key: str
    version: Version
    prompt: PromptFile
    call: providers.ProviderCall
    json_mode: bool
    schema: dict[str, Any] | None
    include_usage: bool = False
    source: str = "api"
    api_key_id: int | None = None
    trace_id: str = field(default_factory=new_trace_id)
    # The id of the run-log row this call will be written as (RunLog.new_id), handed out now
    # so that the answer can name the row: it is the completion's id, `chatcmpl-<log_id>`.
    log_id: int | None = None
    # The model as the prompt (or the eval case, or the judge) names it, before resolving.
    model_name: str | None = None
    # Said to the caller in `x-llmkit-warning`: what of its request was not sent as given.
    warnings: list[str] = field(default_factory=list)

    @property
    def version_label(self) -> str:
        return label(self.version)

    @property
    def completion_id(self) -> str:
        """The id of the answer and of every chunk, as LLMKit makes it: its UI opens the log
        entry whose id is the second `-`-separated part. A call that got no id ahead (the run
        log's database could not reserve one) is named by its trace id, in a form the UI
        does not take for a log id."""
        if self.log_id is None:
            return f"chatcmpl-trace-{self.trace_id}"
        return f"chatcmpl-{self.log_id}"

    def headers(self) -> dict[str, str]:
        headers = {
            "x-llmkit-prompt-version": self.version_label,
            "x-llmkit-trace-id": self.trace_id,
        }
        if self.warnings:
            headers[WARNING_HEADER] = "; ".join(self.warnings)
        return headers


def split_model(model: object) -> tuple[str, str | None]:
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(
            "model must be a prompt key, optionally pinned as key@version", param="model"
        )
    key, _, version = model.strip().partition("@")
    return key, (version or None)


class Executor:
    def __init__(self, ws: Workspace, registry: ModelRegistry, runlog: RunLog) -> None:
        self.ws = ws
        self.registry = registry
        self.runlog = runlog
        self._threads: Workers | None = None

    def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
            self._threads = None

    # -- preparing -----------------------------------------------------------------------

    async def aprepare(self, body: dict[str, Any], **options: Any) -> Execution:
        """prepare() on the executor's own threads, off the event loop: rendering takes up to
        its CPU budget, and a pinned branch or tag is resolved with git the first time. A call
        that the index resolves without git, of a prompt that only substitutes variables, is
        prepared inline: it can cost no more than reading its request."""
        version = options.pop("version", None)
        quick = self._quick(body, version)
        if self._threads is None:
            self._threads = Workers(PREPARE_THREADS, "llmkit-prepare")
        if quick is None:
            return await self._threads.run(partial(self.prepare, body, version=version, **options))
        ex = self.prepare(body, version=quick, **options)
        if ex.log_id is None:
            # No id at hand in memory (the first calls, or a burst faster than the run log
            # reserves blocks ahead): reserving one waits for SQLite, so not on the loop.
            ex.log_id = await self._threads.run(self.runlog.new_id)
        return ex

    def _log_id(self) -> int | None:
        """The id of the call's run-log row: on the event loop only one at hand (aprepare
        reserves one on a thread if need be), elsewhere one reserved if need be."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.runlog.new_id()
        return self.runlog.new_id(wait=False)

    def _quick(self, body: dict[str, Any], version: Version | None) -> Version | None:
        """The version to prepare inline, or None to prepare on a thread (which also raises
        whatever error the lookup has to say)."""
        if isinstance(body, dict) and body.get("model_override") is not None:
            return None  # checking it reads every served prompt's model
        if version is None:
            model = body.get("model") if isinstance(body, dict) else None
            try:
                key, spec = split_model(model)
                version = self.ws.index.version_without_git(key, spec)
            except LlmkitError:
                return None
            if version is None:
                return None  # only git knows this version: a thread resolves it
        try:
            return version if renders_quickly(version.prompt()) else None
        except LlmkitError:
            return None

    def prepare(
        self,
        body: dict[str, Any],
        *,
        source: str = "api",
        api_key_id: int | None = None,
        user_variables: dict[str, Any] | None = None,
        model_override: str | None = None,
        version: Version | None = None,
    ) -> Execution:
        """Resolve, render and merge. `user_variables` (evals) render the user sections with
        their own values; `model_override` (an eval case's `model`) runs the prompt on another
        model or alias, as the body's `model_override` does within what `allowed_override`
        allows; a `version` already resolved (evals) is used as it is instead of `model`."""
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object")
        unknown = set(body) - OTHER_FIELDS - set(REQUEST_PARAMS)
        if unknown:
            raise BadRequest(
                f"Unknown request field(s): {', '.join(sorted(unknown))}", param=min(unknown)
            )
        if version is None:
            key, spec = split_model(body.get("model"))
            version = self.ws.index.version(key, spec)
        else:
            key = version.key
        prompt = version.prompt()
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m for m in messages
        ):
            raise BadRequest("messages must be a list of {role, content} objects", param="messages")
        rendered, warnings = build_messages(
            key,
            prompt,
            messages,
            body.get("variables"),
            user_variables,
            limits=self.registry.limits(),
        )
        if model_override is None and body.get("model_override") is not None:
            model_override = self.allowed_override(body["model_override"])
        target = self.registry.resolve(model_override or prompt.model)
        params: dict[str, Any] = dict(target.params)
        for name in PROMPT_PARAMS:
            if name in prompt.meta:
                params[name] = prompt.meta[name]
        for name in REQUEST_PARAMS:
            if body.get(name) is not None:
                params[name] = body[name]
        if (
            "max_completion_tokens" in params
            and "max_tokens" in params
            and "max_completion_tokens" in body
        ):
            params.pop("max_tokens")
        response_format = params.get("response_format")
        if response_format is not None and not (
            isinstance(response_format, dict) and "type" in response_format
        ):
            raise BadRequest(
                "response_format must be an object with a type", param="response_format"
            )
        json_mode = prompt.json_mode or (response_format or {}).get("type") in JSON_FORMATS
        if prompt.json_mode and response_format is None:
            params["response_format"] = {"type": "json_object"}
        schema = prompt.meta.get("json_schema")
        if response_format and response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema", schema)
        stream_options = body.get("stream_options") or {}
        # The prompt's api_base and fallbacks go with the model it names: another model
        # runs with its alias's own.
        own_model = model_override is None
        call = self.provider_call(
            target,
            rendered,
            params,
            api_base=prompt.meta.get("api_base") if own_model else None,
            timeout=prompt.meta.get("timeout"),
            fallbacks=prompt.meta.get("fallbacks") if own_model else None,
        )
        return Execution(
            key=key,
            version=version,
            prompt=prompt,
            call=call,
            json_mode=json_mode,
            schema=schema if json_mode else None,
            include_usage=bool(
                isinstance(stream_options, dict) and stream_options.get("include_usage")
            ),
            source=source,
            api_key_id=api_key_id,
            log_id=self._log_id(),
            model_name=model_override or prompt.model,
            warnings=warnings,
        )

    def allowed_override(self, name: object) -> str:
        """A caller's `model_override`: an alias of llmkit.yaml or a model a served prompt
        names, the models `GET /v1/ui/models` lists. Any other model string is refused, so
        that a key can only spend on what the repository's owners configured or chose."""
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_MODEL_NAME:
            raise BadRequest(
                "model_override must be the name of an alias of llmkit.yaml or of a model a"
                " prompt uses",
                param="model_override",
            )
        name = name.strip()
        if name in self.registry.aliases() or name in self.ws.index.models_in_use():
            return name
        raise BadRequest(
            f"model_override {name[:80]!r} is neither an alias of llmkit.yaml nor a model a"
            " served prompt uses (GET /v1/ui/models lists those a call may run on)",
            param="model_override",
        )

    def provider_call(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        api_base: str | None = None,
        timeout: float | None = None,
        fallbacks: list[str] | None = None,
    ) -> providers.ProviderCall:
        """The call to `target` as every path sends it: its api_base, key variable, timeout and
        retries, and its fallbacks (or `fallbacks`, a prompt's own), each fallback alias with
        its own api_base and key. `api_base` and `timeout` override the target's."""
        resolved_fallbacks: list[str | providers.Fallback] = []
        for name in target.fallbacks if fallbacks is None else fallbacks:
            resolved = self.registry.resolve(name)
            own = resolved.api_base or resolved.api_key_env or resolved.keyless
            resolved_fallbacks.append(
                providers.Fallback(
                    resolved.model, resolved.api_base, resolved.api_key_env, resolved.keyless
                )
                if resolved.alias and own
                else resolved.model
            )
        return providers.ProviderCall(
            model=target.model,
            messages=messages,
            params=params,
            api_base=api_base or target.api_base,
            api_key_env=target.api_key_env,
            timeout=float(timeout or target.timeout or self.ws.settings.request_timeout_s),
            max_retries=target.max_retries if target.max_retries is not None else 2,
            fallbacks=resolved_fallbacks,
            keyless=target.keyless,
        )

    def prepare_judge(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        version: Version,
        source: str = "judge",
    ) -> Execution:
        """A call the evals' judge makes about an answer of `version`: model or alias `model`
        with `params` over the alias's own, run and logged (source "judge", under the version's
        prompt key) as every other call is."""
        target = self.registry.resolve(model)
        call = self.provider_call(target, messages, {**target.params, **params})
        return Execution(
            key=version.key,
            version=version,
            prompt=version.prompt(),
            call=call,
            json_mode=False,  # the judge's own reader says what is wrong with a bad answer
            schema=None,
            source=source,
            log_id=self._log_id(),
            model_name=model,
        )

    # -- running -------------------------------------------------------------------------

    async def complete(self, ex: Execution) -> dict[str, Any]:
        started = time.perf_counter()
        # Every answer received, so that a JSON retry's tokens are logged too.
        answers: list[dict[str, Any]] = []
        try:
            response = await providers.complete(ex.call)
            answers.append(response)
            if ex.json_mode and json_problem(response, ex.schema):
                response = await providers.complete(ex.call)
                answers.append(response)
                problem = json_problem(response, ex.schema)
                if problem:
                    raise _invalid_json(ex, problem)
        except LlmkitError as exc:
            await self._log_answered(ex, started, answers=answers, error=exc)
            raise
        except Exception as exc:
            await self._log_answered(ex, started, answers=answers, error=_unexpected(ex, exc))
            raise
        except BaseException as exc:
            # Cancelled (server shutdown, or a caller that gave up): the call still happened.
            self._log(ex, started, answers=answers, status="cancelled", error=_gone(exc))
            raise
        response["model"] = ex.key
        await self._log_answered(ex, started, answers=answers)
        # After logging: the row keeps the provider's own id for the answer.
        response["id"] = ex.completion_id
        return response

    async def stream(self, ex: Execution) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chunks with `model` set to the prompt key. JSON mode buffers the answer so it
        can be checked (and retried once) before anything is sent.

        A chunk counts as sent once the consumer asks for the next one; a stream that ends early
        (ClientGone thrown in, cancelled, or closed) is logged `cancelled` with what was sent."""
        started = time.perf_counter()
        state = _StreamState(self.ws.settings.log_field_max_bytes)
        try:
            if ex.json_mode:
                chunks = await self._buffered_json(ex, state, started)
                for chunk in chunks:
                    if _for_client(chunk, ex.include_usage):
                        chunk["id"] = ex.completion_id
                        yield chunk
                    state.sent(chunk)
            else:
                upstream = providers.stream(ex.call)
                try:
                    async for chunk in upstream:
                        state.received(chunk, ex.key, started)
                        if _for_client(chunk, ex.include_usage):
                            chunk["id"] = ex.completion_id
                            yield chunk
                        state.sent(chunk)
                finally:
                    await upstream.aclose()
        except ClientGone as exc:
            self._log(ex, started, error=exc, state=state, status="cancelled")
            raise
        except LlmkitError as exc:
            await self._log_answered(ex, started, error=exc, state=state)
            raise
        except Exception as exc:
            await self._log_answered(ex, started, error=_unexpected(ex, exc), state=state)
            raise
        except BaseException as exc:
            # The client went away (cancellation) or the generator was closed early.
            self._log(ex, started, error=_gone(exc), state=state, status="cancelled")
            raise
        await self._log_answered(ex, started, state=state)

    async def _buffered_json(
        self, ex: Execution, state: _StreamState, started: float
    ) -> list[dict[str, Any]]:
        limit = self.ws.settings.json_buffer_max_bytes
        for attempt in (1, 2):
            state.reset()
            buffer = _JsonBuffer(limit)
            upstream = providers.stream(ex.call)
            try:
                async for chunk in upstream:
                    state.received(chunk, ex.key, started)
                    if not buffer.add(chunk):
                        raise UpstreamError(
                            f"Model {ex.call.model} sent a JSON-mode answer for prompt {ex.key!r}"
                            f" larger than the {limit} bytes it can hold to check",
                            code="json_output_too_large",
                        )
            finally:
                await upstream.aclose()
            chunks = buffer.chunks()
            problem = _json_chunks_problem(chunks, limit, ex.schema)
            if problem is None:
                return chunks
        for chunk in chunks:  # the run log shows the answer that was refused
            state.answer.add(chunk)
        assert problem is not None  # every attempt returned unless its answer had a problem
        raise _invalid_json(ex, problem)

    def _log(self, ex: Execution, started: float, **details: Any) -> None:
        """Log a call that no one is answered for (cancelled): queue the row and go on."""
        self.runlog.log(self._record(ex, started, **details))

    async def _log_answered(
        self, ex: Execution, started: float, *, error: LlmkitError | None = None, **details: Any
    ) -> None:
        """Log a call whose answer or error is about to be sent. With durable logging, wait (off
        the loop) for the commit first, so that a crash after the answer cannot lose the row; if
        the run log cannot commit, the answer becomes that error, while an error answer stays."""
        record = self._record(ex, started, error=error, **details)
        if not self.runlog.durable:
            self.runlog.log(record)
            return
        try:
            await self.runlog.log_committed(record)
        except RunLogUnavailable:
            if error is None:
                raise
            logger.error("run %s: its error is answered before its row is committed", ex.trace_id)

    def _record(
        self,
        ex: Execution,
        started: float,
        *,
        answers: list[dict[str, Any]] | None = None,
        error: LlmkitError | None = None,
        state: _StreamState | None = None,
        status: str | None = None,
    ) -> RunRecord:
        logged_response: Any = answers[-1] if answers else None
        with_usage = [a for a in answers or () if isinstance(a.get("usage"), dict)]
        ttft = None
        if state is not None:
            logged_response = (
                state.text()
                if not state.tool_calls
                else {"content": state.text(), "tool_calls": state.tool_calls}
            )
            with_usage = state.usage_chunks()
            ttft = state.ttft_ms
        usage = _total_usage(with_usage)
        has_usage = bool(with_usage)
        return RunRecord(
            trace_id=ex.trace_id,
            id=ex.log_id,
            prompt_key=ex.key,
            **version_columns(ex.version),
            model=ex.call.model,
            model_name=ex.model_name,
            request={"messages": ex.call.messages, "params": ex.call.params},
            response=logged_response,
            status=status or ("error" if error else "ok"),
            error=error.message if error else None,
            http_status=error.status if error else 200,
            input_tokens=usage.input_tokens if has_usage else None,
            output_tokens=usage.output_tokens if has_usage else None,
            reasoning_tokens=usage.reasoning_tokens if has_usage else None,
            cost=providers.cost_of(ex.call.model, usage) if has_usage else None,
            latency_ms=(time.perf_counter() - started) * 1000,
            ttft_ms=ttft,
            stream=state is not None,
            api_key_id=ex.api_key_id,
            source=ex.source,
        )


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Workers:
    """Up to `size` threads of their own running calls for the event loop: a SimpleQueue in, and
    call_soon_threadsafe out. About half the CPU per call of run_in_executor on a
    ThreadPoolExecutor, which wraps a concurrent future in an asyncio one (measured: this is
    paid on every request). A thread starts when a call finds none waiting, so a busy render
    never holds up the next call, and calls made one at a time use one thread. A call runs in
    its caller's context (what the request pinned: the snapshot of a served ref)."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._waiting = 0  # threads blocked on the queue, ready for a call

    async def run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._queue.put((loop, future, partial(copy_context().run, call)))
            if self._queue.qsize() > self._waiting and self._started < self._size:
                self._started += 1
                name = f"{self._name}-{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        return await future

    def close(self) -> None:
        """Threads end once the calls queued before this are done."""
        with self._lock:
            for _ in range(self._started):
                self._queue.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            item = self._queue.get()
            with self._lock:
                self._waiting -= 1
            if item is None:
                return
            loop, future, call = item
            try:
                outcome: tuple[Any, BaseException | None] = (call(), None)
            except BaseException as exc:  # handed to the awaiting task, which raises it
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Answer:
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


class _StreamState:
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
        self.answer = _Answer(self.limit)
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


class _JsonBuffer:
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


def _json_chunks_problem(
    chunks: list[dict[str, Any]], limit: int, schema: dict[str, Any] | None
) -> str | None:
    answer = _Answer(limit)
    for chunk in chunks:
        answer.add(chunk)
    return None if answer.tool_calls else json_text_problem(answer.text(), schema)


def _set_text(chunk: dict[str, Any], text: str) -> None:
    delta = chunk["choices"][0]["delta"]
    if "content" in delta:
        delta["content"] = text
    else:
        delta["tool_calls"][0]["function"]["arguments"] = text


def _for_client(chunk: dict[str, Any], include_usage: bool) -> bool:
    """Whether the client gets this chunk; as OpenAI does, usage only with include_usage (the
    provider is always asked for it, for the run log)."""
    if include_usage:
        return True
    chunk.pop("usage", None)
    return bool(chunk.get("choices"))


def _total_usage(holders: list[dict[str, Any]]) -> providers.Usage:
    parts = [providers.usage_of(h) for h in holders]
    return providers.Usage(
        input_tokens=sum(p.input_tokens for p in parts),
        output_tokens=sum(p.output_tokens for p in parts),
        reasoning_tokens=sum(p.reasoning_tokens for p in parts),
    )


def _invalid_json(ex: Execution, problem: str) -> UpstreamError:
    return UpstreamError(
        f"Model {ex.call.model} did not return valid JSON for prompt {ex.key!r}"
        f" (after one retry): {problem}",
        code="invalid_json_output",
    )


def _gone(exc: BaseException) -> ClientGone | None:
    """Why a call was cancelled, when the API cancelled it for a client that went away (the
    ClientGone is the cancellation's message); None for any other cancellation."""
    if isinstance(exc, asyncio.CancelledError) and exc.args and isinstance(exc.args[0], ClientGone):
        return exc.args[0]
    return None


def _unexpected(ex: Execution, exc: Exception) -> LlmkitError:
    """What the run log records for a failure that is not an LlmkitError (the API answers 500)."""
    return LlmkitError(
        f"Internal error calling {ex.call.model}: {type(exc).__name__}: {exc}",
        code="internal_error",
    )


def build_messages(
    key: str,
    prompt: PromptFile,
    messages: list[dict[str, Any]],
    variables: Any,
    user_variables: dict[str, Any] | None = None,
    *,
    limits: Limits | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The conversation sent upstream: the prompt's rendered sections (within `limits`), then
    the caller's turns; and warnings for the caller about what was not sent as given."""
    kind = prompt.prompt_type
    rest = list(messages)
    system_index = next((i for i, m in enumerate(rest) if m.get("role") == "system"), None)
    caller_system = rest.pop(system_index) if system_index is not None else None
    user_vars = user_variables
    warnings: list[str] = []
    if variables is not None:
        if not isinstance(variables, dict):
            raise BadRequest("variables must be a JSON object", param="variables")
        system_vars = variables
    else:
        system_vars = {}
        if kind in ("dynamic_system", "dynamic_both") and caller_system is not None:
            system_vars = _json_object(caller_system.get("content"), key, kind, "system")
            caller_system = None  # read as the template's variables
        if kind == "dynamic_both":
            user_index = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
            if user_index is not None:
                user_vars = _json_object(rest.pop(user_index).get("content"), key, kind, "user")
    if caller_system is not None:
        warnings.append(_dropped_system_warning(key, prompt))
    # The key was validated when it was looked up; errors name the file.
    rendered: list[dict[str, Any]] = render_messages(
        prompt, system_vars, user_vars, limits=limits, path=path_for_key(key)
    )
    if prompt.is_chat:
        return rendered + rest, warnings
    if kind == "dynamic_both" or (rendered and rendered[-1]["role"] == "user"):
        return rendered, warnings
    last_user = next((m for m in reversed(rest) if m.get("role") == "user"), None)
    return rendered + ([last_user] if last_user is not None else []), warnings


def _dropped_system_warning(key: str, prompt: PromptFile) -> str:
    """What the caller is told when its system message is not sent: a prompt's system message
    is the prompt's (its instructions are what is versioned and reviewed), so a caller's never
    replaces it; answered, with this warning, rather than refused, as OpenAI clients send a
    system message by habit."""
    if any(m.role == "system" for m in prompt.messages):
        return (
            f"the caller's system message was not sent: prompt {key!r} sends its own"
            " (to pass template variables in it instead, leave out 'variables')"
        )
    return f"the caller's system message was not sent: prompt {key!r} has no system message"


def _json_object(content: Any, key: str, kind: str, role: str) -> dict[str, Any]:
    if isinstance(content, dict):
        return content
    text = content if isinstance(content, str) else ""
    if json_too_deep(text, MAX_JSON_DEPTH):
        raise BadRequest(
            f"The first {role} message of a call to {key!r} holds template variables nested"
            f" more than {MAX_JSON_DEPTH} levels deep",
            param="messages",
        )
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise BadRequest(
            f"Prompt {key!r} is {kind}: the first {role} message must be a JSON object of template"
            f" variables (or pass a top-level 'variables' object); got {shown!r}",
            param="messages",
        )
    return value


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
        shown = text if len(text) <= 80 else text[:77] + "..."
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

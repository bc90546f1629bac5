"""Executing a prompt: variables -> messages -> parameters -> provider -> run log.

The request is OpenAI's chat-completions body with the prompt key (optionally pinned,
`key@7`, `key@3fa9c1e`, `key@production`) as `model`. Caller text is never rendered as a
template: only the prompt's own sections are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from llmkit import providers
from llmkit.answers import (
    JsonBuffer,
    StreamState,
    for_client,
    json_chunks_problem,
    json_problem,
    total_usage,
)
from llmkit.errors import BadRequest, ClientGone, LlmkitError, RunLogUnavailable, UpstreamError
from llmkit.messages import build_messages
from llmkit.models import ModelRegistry, ModelTarget
from llmkit.promptfile import PromptFile
from llmkit.render import renders_quickly
from llmkit.runlog import RunLog
from llmkit.runlog_record import RunRecord, new_trace_id, version_columns
from llmkit.versions import Version, label
from llmkit.workers import Workers
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
# Threads that prepare calls (render templates, resolve pinned refs) for the API. A render
# that burns its whole CPU budget holds one of them; the event loop never waits on any.
PREPARE_THREADS = 8


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
            return None  # checking it may parse every served prompt (once per index change)
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
        state = StreamState(self.ws.settings.log_field_max_bytes)
        try:
            if ex.json_mode:
                chunks = await self._buffered_json(ex, state, started)
                for chunk in chunks:
                    if for_client(chunk, ex.include_usage):
                        chunk["id"] = ex.completion_id
                        yield chunk
                    state.sent(chunk)
            else:
                upstream = providers.stream(ex.call)
                try:
                    async for chunk in upstream:
                        state.received(chunk, ex.key, started)
                        if for_client(chunk, ex.include_usage):
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
        self, ex: Execution, state: StreamState, started: float
    ) -> list[dict[str, Any]]:
        limit = self.ws.settings.json_buffer_max_bytes
        for attempt in (1, 2):
            state.reset()
            buffer = JsonBuffer(limit)
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
            problem = json_chunks_problem(chunks, limit, ex.schema)
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
        state: StreamState | None = None,
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
        usage = total_usage(with_usage)
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

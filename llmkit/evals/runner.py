"""Running eval cases: each case (times its repeats) against a prompt version, with bounded
concurrency and a response cache; optionally against the base ref's versions too.

Every call, the judge's too, goes through the executor: the same aliases, fallbacks (each with
its own api_base and key), retries and run log as any other call. A provider whose key is not
set stops the run with that one error (ProviderNotConfigured) rather than failing each case."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmkit import providers
from llmkit.errors import LlmkitError, NotFound, ProviderNotConfigured
from llmkit.evals.asserts import Judge, Outcome, check_all
from llmkit.evals.cases import EvalCase
from llmkit.evals.records import EvalRecords, cache_key
from llmkit.evals.results import CaseResult
from llmkit.execute import Execution, Executor
from llmkit.runlog_record import version_columns
from llmkit.versions import Version

JUDGE_SYSTEM = (
    "You grade an AI assistant's output against a rubric. Reply with a JSON object: "
    '{"pass": true or false, "reason": "one sentence"}.'
)

Progress = Callable[[CaseResult], None]


@dataclass
class RunOptions:
    concurrency: int = 8
    repeat: int | None = None  # overrides every case's repeat
    use_cache: bool = True
    judge_model: str = "judge"  # an alias from llmkit.yaml, else `default`, else this string
    source: str = "eval"


class EvalRunner:
    def __init__(
        self, executor: Executor, records: EvalRecords, options: RunOptions | None = None
    ) -> None:
        self.executor = executor
        self.records = records
        self.options = options or RunOptions()
        self._new_cache: list[tuple[str, str, dict[str, Any], float | None]] = []
        # Keys found missing during the current run(); any at all and run() raises.
        self._not_configured: list[ProviderNotConfigured] = []

    def plan(
        self, cases: list[EvalCase], ref: str | None = None
    ) -> list[tuple[EvalCase, Version, int]]:
        """The runs `run()` makes: (case, version, repeat index). Cases whose prompt does not
        exist at `ref` are left out (for a base ref, they are new cases)."""
        jobs: list[tuple[EvalCase, Version, int]] = []
        for case in cases:
            try:
                version = self.executor.ws.index.version(case.prompt_key, ref)
            except NotFound:
                if ref is None:
                    raise
                continue
            repeats = self.options.repeat or case.repeat
            jobs.extend((case, version, i) for i in range(repeats))
        return jobs

    async def run(
        self, cases: list[EvalCase], ref: str | None = None, progress: Progress | None = None
    ) -> list[CaseResult]:
        """Every case at `ref` (None: what is served), as planned by `plan()`. Planning (git, for
        a branch or tag) and storing the cache run in threads, off the caller's event loop.

        Raises ProviderNotConfigured, naming every key variable found missing, when a call
        (case or judge) needed a key the environment lacks: the results would only say that
        again for each case. Cases not started by then are not started."""
        jobs = await asyncio.to_thread(self.plan, cases, ref)
        limit = asyncio.Semaphore(max(1, self.options.concurrency))
        self._not_configured = []

        async def one(case: EvalCase, version: Version, index: int) -> CaseResult | None:
            async with limit:
                if self._not_configured:
                    return None
                result = await self.run_case(case, version, index)
            if progress and not self._not_configured:
                progress(result)
            return result

        try:
            results = await asyncio.gather(*(one(*job) for job in jobs))
        finally:
            new, self._new_cache = self._new_cache, []
            await asyncio.to_thread(self.records.remember, new)
        if self._not_configured:
            raise not_configured(self._not_configured)
        return [result for result in results if result is not None]

    async def run_case(self, case: EvalCase, version: Version, repeat_index: int = 0) -> CaseResult:
        logged = version_columns(version)
        model = case.model or "?"
        try:
            ex = await self._prepare(case, version)
            model = ex.call.model
            outcome, cached = await self._outcome(ex, repeat_index)
        except LlmkitError as exc:
            if isinstance(exc, ProviderNotConfigured):
                self._not_configured.append(exc)
            outcome, cached = Outcome(text="", error=exc.message), False
        results = await check_all(case.assertions, outcome, self._judge_of(version))
        return CaseResult.of(
            case,
            outcome,
            results,
            version_number=logged["version_number"],
            version_sha=logged["version_sha"],
            draft_blob=logged["draft_blob"],
            model=model,
            repeat_index=repeat_index,
            cached=cached,
        )

    async def _prepare(self, case: EvalCase, version: Version) -> Execution:
        """Off the event loop, as in the API: rendering takes up to its CPU budget."""
        user_vars = {**case.vars, **case.user_vars} if case.user_vars else None
        body = {"model": case.prompt_key, "messages": case.messages, "variables": case.vars}
        return await self.executor.aprepare(
            body,
            source=self.options.source,
            user_variables=user_vars,
            model_override=case.model,
            version=version,
        )

    async def _outcome(self, ex: Execution, repeat_index: int) -> tuple[Outcome, bool]:
        call = ex.call
        # Repeats are independent samples, so each repeat has its own cache entry.
        key = cache_key(
            call.model, call.messages, {**call.params, "_repeat": repeat_index}, call.api_base
        )
        hit = self._cached(key)
        if hit is not None:
            response, latency = hit
            return outcome_of(response, latency or 0.0, call.model), True
        started = time.perf_counter()
        response = await self.executor.complete(ex)
        latency = (time.perf_counter() - started) * 1000
        self._new_cache.append((key, call.model, response, latency))
        return outcome_of(response, latency, call.model), False

    def _cached(self, key: str) -> tuple[dict[str, Any], float | None] | None:
        return self.records.cached(key) if self.options.use_cache else None

    def _judge_of(self, version: Version) -> Judge:
        """The judge for answers of `version`: its calls are logged under that version."""

        async def judge(rubric: str, output: str, model: str | None) -> tuple[bool, str]:
            try:
                return await self._judge(version, rubric, output, model)
            except ProviderNotConfigured as exc:
                self._not_configured.append(exc)
                raise

        return judge

    async def _judge(
        self, version: Version, rubric: str, output: str, model: str | None
    ) -> tuple[bool, str]:
        name = model or self.options.judge_model
        if name not in self.executor.registry.aliases() and not model:
            name = "default"
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Rubric:\n{rubric}\n\nOutput:\n{output}"},
        ]
        params = {"response_format": {"type": "json_object"}, "temperature": 0}
        ex = self.executor.prepare_judge(name, messages, params, version=version)
        call = ex.call
        # A cached run makes no provider calls at all, so the judge's answers are cached too.
        key = cache_key(call.model, call.messages, call.params, call.api_base)
        hit = self._cached(key)
        if hit is not None:
            response = hit[0]
        else:
            response = await self.executor.complete(ex)
            self._new_cache.append((key, call.model, response, None))
        text = (response.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        try:
            verdict = json.loads(text)
        except ValueError:
            return False, f"judge {call.model} did not answer JSON: {text[:200]!r}"
        if not isinstance(verdict, dict) or not isinstance(verdict.get("pass"), bool):
            return False, f"judge {call.model} answered without a boolean 'pass': {text[:200]!r}"
        return verdict["pass"], str(verdict.get("reason") or "")


def not_configured(errors: list[ProviderNotConfigured]) -> ProviderNotConfigured:
    """One error for every distinct missing key, in the order they were found."""
    distinct: dict[str, ProviderNotConfigured] = {}
    for error in errors:
        distinct.setdefault(error.key_env, error)
    first, *more = distinct.values()
    if not more:
        return first
    return ProviderNotConfigured(
        "; ".join(error.message for error in distinct.values()),
        provider=first.provider,
        key_env=", ".join(distinct),
    )


def outcome_of(response: dict[str, Any], latency_ms: float, model: str) -> Outcome:
    message = (response.get("choices") or [{}])[0].get("message") or {}
    usage = providers.usage_of(response)
    return Outcome(
        text=message.get("content") or "",
        response=response,
        latency_ms=latency_ms,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost=providers.cost_of(model, usage),
        tool_calls=message.get("tool_calls") or [],
    )

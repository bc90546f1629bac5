"""Running eval cases: each case (times its repeats) against a prompt version, with bounded
concurrency and a response cache; optionally against the base ref's versions too."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmkit import providers
from llmkit.errors import LlmkitError, NotFound
from llmkit.evals.asserts import Outcome, check_all
from llmkit.evals.cases import EvalCase
from llmkit.evals.records import EvalRecords, cache_key
from llmkit.evals.results import CaseResult
from llmkit.execute import Execution, Executor
from llmkit.runlog import version_columns
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
    def __init__(self, executor: Executor, records: EvalRecords, options: RunOptions | None = None) -> None:
        self.executor = executor
        self.records = records
        self.options = options or RunOptions()
        self._new_cache: list[tuple[str, str, dict[str, Any], float | None]] = []

    def plan(self, cases: list[EvalCase], ref: str | None = None) -> list[tuple[EvalCase, Version, int]]:
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

    async def run(self, cases: list[EvalCase], ref: str | None = None, progress: Progress | None = None) -> list[CaseResult]:
        """Every case at `ref` (None: what is served), as planned by `plan()`. Planning (git, for
        a branch or tag) and storing the cache run in threads, off the caller's event loop."""
        jobs = await asyncio.to_thread(self.plan, cases, ref)
        limit = asyncio.Semaphore(max(1, self.options.concurrency))

        async def one(case: EvalCase, version: Version, index: int) -> CaseResult:
            async with limit:
                result = await self.run_case(case, version, index)
            if progress:
                progress(result)
            return result

        try:
            return list(await asyncio.gather(*(one(*job) for job in jobs)))
        finally:
            new, self._new_cache = self._new_cache, []
            await asyncio.to_thread(self.records.remember, new)

    async def run_case(self, case: EvalCase, version: Version, repeat_index: int = 0) -> CaseResult:
        logged = version_columns(version)
        model = case.model or "?"
        try:
            ex = await self._prepare(case, version)
            model = ex.call.model
            outcome, cached = await self._outcome(ex, repeat_index)
        except LlmkitError as exc:
            outcome, cached = Outcome(text="", error=exc.message), False
        results = await check_all(case.assertions, outcome, self._judge)
        return CaseResult.of(
            case, outcome, results, version_number=logged["version_number"],
            version_sha=logged["version_sha"], draft_blob=logged["draft_blob"], model=model,
            repeat_index=repeat_index, cached=cached,
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
        key = cache_key(call.model, call.messages, {**call.params, "_repeat": repeat_index}, call.api_base)
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

    async def _judge(self, rubric: str, output: str, model: str | None) -> tuple[bool, str]:
        registry = self.executor.registry
        name = model or self.options.judge_model
        if name not in registry.aliases() and not model:
            name = "default"
        target = registry.resolve(name)
        call = providers.ProviderCall(
            model=target.model,
            messages=[
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": f"Rubric:\n{rubric}\n\nOutput:\n{output}"},
            ],
            params={**target.params, "response_format": {"type": "json_object"}, "temperature": 0},
            api_base=target.api_base,
            api_key_env=target.api_key_env,
            timeout=float(target.timeout or self.executor.ws.settings.request_timeout_s),
            max_retries=target.max_retries if target.max_retries is not None else 2,
            fallbacks=[registry.resolve(f).model for f in target.fallbacks],
        )
        # A cached run makes no provider calls at all, so the judge's answers are cached too.
        key = cache_key(call.model, call.messages, call.params, call.api_base)
        hit = self._cached(key)
        if hit is not None:
            response = hit[0]
        else:
            response = await providers.complete(call)
            self._new_cache.append((key, call.model, response, None))
        text = (response.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        try:
            verdict = json.loads(text)
        except ValueError:
            return False, f"judge {target.model} did not answer JSON: {text[:200]!r}"
        if not isinstance(verdict, dict) or not isinstance(verdict.get("pass"), bool):
            return False, f"judge {target.model} answered without a boolean 'pass': {text[:200]!r}"
        return verdict["pass"], str(verdict.get("reason") or "")


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

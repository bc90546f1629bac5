"""Every call LLMKit's web UI (commit 7ae6621) makes to `/v1/ui`, as that UI builds it, and
every response field it reads with the JSON type it expects: the one place that says what
"speaks LLMKit's shapes" (DESIGN.md, API) means. `tests/test_ui_contract.py` replays these
calls in this order against the real app.

Types come from the UI's `types/response/*.ts` and from how its pages and components use a
value: an id that goes into a URL or is compared with `===` to another id is an integer, a
value passed to `JSON.parse` is a string holding JSON, a value given to `new Date()` is a
timestamp, `x.toFixed(2)` needs a number. Only fields the UI declares or reads are listed;
llmkit may answer more beside them.

Paths use `{name}` and bodies `Ref("name")` for values the replay learned from an earlier
answer, the way the UI learns them (the id of a prompt from the list, a log id from a
completion's `id`, ...); `captures` says which answer field feeds which name.

Field paths: `a.b` is a member, `a[].b` is `b` in every element of the array `a` (which must
not be empty), `[0].b` is `b` in the first element. Types: int, number, str, bool, timestamp,
json-str (a string `JSON.parse` accepts), log-ref (a string whose second `-`-separated part
`parseInt` reads as the integer id of a run-log entry, as `response.id.split('-')[1]` in
components/prompts/test.vue does), array, object; a trailing `?` allows null, never absence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ref:
    """A body value the replay fills in from what an earlier answer said."""

    name: str


@dataclass(frozen=True)
class UiCall:
    name: str
    source: str  # the UI files the call and the reads of its answer come from
    method: str
    path: str
    body: Any = None
    query: Mapping[str, str] = field(default_factory=dict)
    many: bool = False  # the answer is a JSON array, `reads` apply to each of its items
    stream: bool = False  # the answer is SSE; `reads` apply to the chunk with finish_reason
    reads: Mapping[str, str] = field(default_factory=dict)
    captures: Mapping[str, str] = field(default_factory=dict)


# The values the UI's forms start from (components/prompts/add-edit.vue): a prompt whose
# model was not picked sends `model_id: null`.
PROMPT_FORM = {
    "key": "ui-greeter",
    "system": "You are a {{ personality }} greeter.",
    "user": "Greet me: {{ question }}",
    "model_id": None,
    "max_tokens": 256,
    "temperature": 0.7,
    "json_mode": False,
    "prompt_type": "dynamic_both",
    "is_chat": False,
}

# The JSON context the test and chat panels put in a system (and user) message.
CONTEXT = '{"personality":"cheerful","question":"Where am I?"}'

# The chat panel's JSON context for a chat prompt (components/prompts/chat-test.vue).
CHAT_CONTEXT = '{"mood":"calm"}'

# types/response/prompts.ts `Prompt`, read by pages/prompts.vue, pages/evals.vue,
# components/prompts/view.vue (temperature.toFixed, version diffs), add-edit.vue (model_id
# matched against Model.id), evals/view-prompt-eval-input.vue (version_id in a URL).
PROMPT_READS = {
    "id": "int",
    "key": "str",
    "system": "str",
    "user": "str",
    "model": "str",
    "model_id": "int",
    "provider": "str",
    "max_tokens": "int",
    "temperature": "number",
    "json_mode": "bool",
    "prompt_type": "str",
    "is_chat": "bool",
    "version_id": "int",
    "version_number": "int",
    "system_version_diff": "str?",
    "user_version_diff": "str?",
    "updated_at": "timestamp",
}

# types/response/logs.ts `ApiLogReponse`, read by pages/traces.vue and
# components/prompts/test.vue (request_body/response_data through JSON.parse).
LOG_READS = {
    "id": "int",
    "prompt_id": "int?",
    "model_id": "int",
    "model_name": "str",
    "status_code": "int?",
    "latency_ms": "number?",
    "input_tokens": "int?",
    "output_tokens": "int?",
    "reasoning_tokens": "int?",
    "request_body": "json-str?",
    "response_data": "json-str?",
    "created_at": "timestamp",
}

# types/response/prompt_eval.ts `PromptEvalResponse`, read by components/evals/index.vue,
# create-prompt-eval-input.vue (JSON.parse(input_data)) and eval-run-cards.vue.
EVAL_READS = {
    "id": "int",
    "prompt_id": "int",
    "name": "str",
    "input_data": "json-str",
    "created_at": "timestamp",
    "updated_at": "timestamp",
}

# types/response/prompt_eval_runs.ts `PromptEvalRunResponse`, read by
# components/evals/view-prompt-eval-input.vue and eval-run-cards.vue (prompt_eval_id matched
# with `===` against PromptEvalResponse.id, score averaged, output shown).
RUN_READS = {
    "id": "int",
    "run_id": "str",
    "prompt_version_id": "int",
    "prompt_eval_id": "int",
    "prompt_eval_name": "str",
    "score": "number?",
    "output": "str",
    "created_at": "timestamp",
    "updated_at": "timestamp",
}


def _each(prefix: str, reads: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}.{name}": kind for name, kind in reads.items()}


CALLS: tuple[UiCall, ...] = (
    # composables/useModels.ts fetchModels; pages/prompts.vue, components/prompts/add-edit.vue
    # (types/response/models.ts `Model`: the picker lists name and provider_name, keyed by id).
    UiCall(
        "list models",
        "composables/useModels.ts, components/prompts/add-edit.vue",
        "GET",
        "/v1/ui/models",
        many=True,
        reads={
            "id": "int",
            "provider_id": "int",
            "name": "str",
            "provider_name": "str",
            "provider_base_url": "str",
            "supports_json": "bool",
            "supports_tools": "bool",
        },
    ),
    # composables/usePrompts.ts fetchPrompts; pages/prompts.vue selects prompts[0].
    UiCall(
        "list prompts",
        "composables/usePrompts.ts, pages/prompts.vue, components/prompts/view.vue",
        "GET",
        "/v1/ui/prompts",
        many=True,
        reads=PROMPT_READS,
    ),
    # composables/usePrompts.ts createPrompt, body as it builds it from PromptCreateDTO.
    UiCall(
        "create prompt",
        "composables/usePrompts.ts, components/prompts/add-edit.vue",
        "POST",
        "/v1/ui/prompts",
        body=PROMPT_FORM,
        reads=PROMPT_READS,
        captures={"new_prompt_id": "id"},
    ),
    # composables/usePrompts.ts updatePrompt (the same fields as a create; the form keeps the
    # prompt's key). pages/prompts.vue edits the selected prompt, prompts[0].
    UiCall(
        "update prompt",
        "composables/usePrompts.ts, pages/prompts.vue",
        "PUT",
        "/v1/ui/prompts/{prompt_id}",
        body={
            **PROMPT_FORM,
            "key": Ref("prompt_key"),
            "system": "You are a very {{ personality }} assistant.",
            "user": "{{ question }}",
        },
        reads=PROMPT_READS,
    ),
    # No composable fetches one prompt; the route is part of the CRUD the UI's API offers.
    UiCall(
        "get prompt",
        "composables/usePrompts.ts (GET /v1/ui/prompts/{id})",
        "GET",
        "/v1/ui/prompts/{prompt_id}",
        reads=PROMPT_READS,
        captures={"version_id": "version_id"},
    ),
    # components/prompts/test.vue execute -> usePrompts.ts executeApiCompletion.
    UiCall(
        "execute",
        "composables/usePrompts.ts executeApiCompletion, components/prompts/test.vue",
        "POST",
        "/v1/ui/prompts/execute",
        body={
            "model": Ref("prompt_key"),
            "messages": [
                {"role": "system", "content": CONTEXT},
                {"role": "user", "content": CONTEXT},
            ],
        },
        reads={"id": "log-ref", "choices[].message.content": "str"},
        captures={"log_ref": "id"},
    ),
    # components/prompts/test.vue executeStream -> executeApiCompletionStream -> useSSE.ts.
    UiCall(
        "execute stream",
        "composables/usePrompts.ts executeApiCompletionStream, composables/useSSE.ts",
        "POST",
        "/v1/ui/prompts/execute/stream",
        body={
            "model": Ref("prompt_key"),
            "messages": [
                {"role": "system", "content": CONTEXT},
                {"role": "user", "content": CONTEXT},
            ],
            "stream": True,
        },
        stream=True,
        reads={"id": "log-ref", "choices[].finish_reason": "str"},
    ),
    # composables/usePrompts.ts executeChat (no page calls it; the composable exports it).
    UiCall(
        "execute chat",
        "composables/usePrompts.ts executeChat",
        "POST",
        "/v1/ui/prompts/execute/chat",
        body={
            "model": Ref("chat_prompt_key"),
            "messages": [
                {"role": "system", "content": CHAT_CONTEXT},
                {"role": "user", "content": "Hello"},
            ],
        },
        reads={
            "id": "log-ref",
            "choices[].message.content": "str",
            "usage.prompt_tokens": "int",
            "usage.completion_tokens": "int",
        },
    ),
    # components/prompts/chat-test.vue sendMessage (SSE straight from the component).
    UiCall(
        "execute chat stream",
        "components/prompts/chat-test.vue",
        "POST",
        "/v1/ui/prompts/execute/chat/stream",
        body={
            "model": Ref("chat_prompt_key"),
            "messages": [
                {"role": "system", "content": CHAT_CONTEXT},
                {"role": "user", "content": "Hello"},
            ],
            "stream": True,
        },
        stream=True,
        reads={"choices[].finish_reason": "str"},
    ),
    # composables/usePrompts.ts executePrompt: `body: any` and no caller in pages or
    # components; the answer is typed `PromptExecutionResponse` {content, log}.
    UiCall(
        "execute by id",
        "composables/usePrompts.ts executePrompt, types/response/prompts.ts",
        "POST",
        "/v1/ui/prompts/execute/{prompt_id}",
        body={"personality": "cheerful", "question": "Where am I?"},
        reads={"content": "str", **_each("log", LOG_READS)},
    ),
    # composables/usePrompts.ts executePromptStream: `$fetch<string>`, nothing read from it.
    UiCall(
        "execute by id stream",
        "composables/usePrompts.ts executePromptStream",
        "POST",
        "/v1/ui/prompts/execute/{prompt_id}/stream",
        body={"personality": "cheerful", "question": "Where am I?"},
    ),
    # composables/useLogs.ts fetchLogs; pages/traces.vue (page size 10).
    UiCall(
        "list logs",
        "composables/useLogs.ts fetchLogs, pages/traces.vue",
        "GET",
        "/v1/ui/logs",
        query={"page": "1", "page_size": "10"},
        many=True,
        reads=LOG_READS,
    ),
    # composables/useLogs.ts fetchLogsCount; pages/traces.vue pagination.
    UiCall(
        "count logs",
        "composables/useLogs.ts fetchLogsCount, pages/traces.vue",
        "GET",
        "/v1/ui/logs/count",
        reads={"count": "int"},
    ),
    # composables/useLogs.ts fetchLogById with the id test.vue parsed from a completion's id.
    UiCall(
        "get log",
        "composables/useLogs.ts fetchLogById, components/prompts/test.vue",
        "GET",
        "/v1/ui/logs/{log_id}",
        reads=LOG_READS,
    ),
    # composables/usePromptEvals.ts fetchEvalByPrompt; components/evals/index.vue.
    UiCall(
        "list prompt evals",
        "composables/usePromptEvals.ts fetchEvalByPrompt, components/evals/index.vue",
        "GET",
        "/v1/ui/prompts/{prompt_id}/prompt-evals",
        many=True,
        reads=EVAL_READS,
        captures={"eval_id": "[0].id"},
    ),
    # composables/usePromptEvals.ts createEval; body from create-prompt-eval-input.vue.
    UiCall(
        "create prompt eval",
        "composables/usePromptEvals.ts createEval, components/evals/create-prompt-eval-input.vue",
        "POST",
        "/v1/ui/prompt-evals",
        body={
            "prompt_id": Ref("prompt_id"),
            "input_data": {"personality": "grumpy", "question": "Why?"},
            "name": "grumpy why",
        },
        reads=EVAL_READS,
    ),
    # composables/usePromptEvals.ts fetchEvalById (exported; no component calls it).
    UiCall(
        "get prompt eval",
        "composables/usePromptEvals.ts fetchEvalById",
        "GET",
        "/v1/ui/prompt-evals/{eval_id}",
        reads=EVAL_READS,
    ),
    # composables/usePromptEvals.ts updateEval; create-prompt-eval-input.vue sends the same
    # payload as for a create, prompt_id included.
    UiCall(
        "update prompt eval",
        "composables/usePromptEvals.ts updateEval, components/evals/create-prompt-eval-input.vue",
        "PUT",
        "/v1/ui/prompt-evals/{eval_id}",
        body={
            "prompt_id": Ref("prompt_id"),
            "input_data": {"personality": "cheerful", "question": "Where now?"},
            "name": "cheerful where",
        },
        reads=EVAL_READS,
    ),
    # composables/usePromptEvalRuns.ts createEvalRun; view-prompt-eval-input.vue passes
    # prompt.id and prompt.version_id.
    UiCall(
        "run prompt evals",
        "composables/usePromptEvalRuns.ts createEvalRun,"
        " components/evals/view-prompt-eval-input.vue",
        "POST",
        "/v1/ui/prompt-eval-runs/{prompt_id}/version/{version_id}",
        reads={"run_id": "str", **_each("runs[]", RUN_READS)},
    ),
    # composables/usePromptEvalRuns.ts fetchEvalRunsByPromptVersion.
    UiCall(
        "list eval runs",
        "composables/usePromptEvalRuns.ts, components/evals/view-prompt-eval-input.vue",
        "GET",
        "/v1/ui/prompt-eval-runs/{prompt_id}/version/{version_id}",
        many=True,
        reads=RUN_READS,
        captures={"eval_run_id": "[0].id"},
    ),
    # composables/usePromptEvalRuns.ts fetchEvalRunById (exported; no component calls it).
    UiCall(
        "get eval run",
        "composables/usePromptEvalRuns.ts fetchEvalRunById",
        "GET",
        "/v1/ui/prompt-eval-runs/{eval_run_id}",
        reads=RUN_READS,
    ),
    # composables/usePromptEvalRuns.ts updateEvalRunScore; components/evals/eval-run-cards.vue.
    UiCall(
        "score eval run",
        "composables/usePromptEvalRuns.ts updateEvalRunScore, components/evals/eval-run-cards.vue",
        "PUT",
        "/v1/ui/prompt-eval-runs/{eval_run_id}",
        body={"id": Ref("eval_run_id"), "score": 4},
        reads=RUN_READS,
    ),
    # composables/usePrompts.ts getPromptPerformance; components/evals/performance-chart.vue
    # maps the array (`v${version_number}`, avg_score, run_count, new Date(version_date)).
    UiCall(
        "prompt performance",
        "composables/usePrompts.ts getPromptPerformance, components/evals/performance-chart.vue",
        "GET",
        "/v1/ui/prompts/{prompt_id}/performance",
        many=True,
        reads={
            "version_id": "int",
            "version_number": "int",
            "version_date": "timestamp",
            "avg_score": "number?",
            "run_count": "int",
        },
    ),
    # pages/settings.vue fetchApiKeys (fetch() straight from the page).
    UiCall(
        "list api keys",
        "pages/settings.vue fetchApiKeys",
        "GET",
        "/v1/ui/settings/api-keys",
        many=True,
        reads={"id": "int", "name": "str", "created_at": "timestamp"},
    ),
    # pages/settings.vue createApiKey shows `data.key` once.
    UiCall(
        "create api key",
        "pages/settings.vue createApiKey",
        "POST",
        "/v1/ui/settings/api-keys",
        body={"name": "ui key"},
        reads={"key": "str"},
        captures={"api_key_id": "id"},
    ),
    # pages/settings.vue deleteApiKey: only `response.ok` matters.
    UiCall(
        "delete api key",
        "pages/settings.vue deleteApiKey",
        "DELETE",
        "/v1/ui/settings/api-keys/{api_key_id}",
    ),
    # composables/usePromptEvals.ts deleteEval: only success matters.
    UiCall(
        "delete prompt eval",
        "composables/usePromptEvals.ts deleteEval",
        "DELETE",
        "/v1/ui/prompt-evals/{eval_id}",
    ),
    # composables/usePrompts.ts deletePrompt: only success matters.
    UiCall(
        "delete prompt",
        "composables/usePrompts.ts deletePrompt",
        "DELETE",
        "/v1/ui/prompts/{new_prompt_id}",
    ),
)

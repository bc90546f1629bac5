"""Request and response bodies, named by role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import BaseModel, ConfigDict, Field, with_config

# pydantic reads TypedDicts from typing_extensions before Python 3.12
from typing_extensions import TypedDict

from llmkit.keys import ApiKey


class CommitInfo(BaseModel):
    """Optional commit details for any write."""

    message: str | None = Field(None, max_length=10_000, description="Commit message")
    author_name: str | None = Field(None, max_length=200)
    author_email: str | None = Field(None, max_length=200)
    base_version: str | None = Field(
        None, description="sha of the version this edit starts from; 409 if the prompt moved on"
    )


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class PromptWrite(CommitInfo):
    """Create or update a prompt: either the whole file as `content`, or structured fields."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, max_length=300)
    content: str | None = Field(None, description="The whole markdown file, frontmatter included")
    system: str | None = None
    user: str | None = None
    messages: list[MessageIn] | None = Field(
        None, description="All sections in order (few-shot turns); replaces system/user"
    )
    model: str | None = None
    model_id: int | None = Field(
        None,
        description="LLMKit's model id (GET /v1/ui/models): writes that model's name as `model`;"
        " null picks none",
    )
    max_tokens: int | None = None
    temperature: float | None = None
    json_mode: bool | None = None
    prompt_type: Literal["static", "dynamic_system", "dynamic_both"] | None = None
    is_chat: bool | None = None
    description: str | None = None
    frontmatter: dict[str, Any] | None = Field(None, description="Other frontmatter fields")


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=100)
    scope: Literal["admin", "run"] = "run"


# A key as the API shows it: the fields of the stored record, under the name of its role (no
# docstring: it would become the schema's description).
class ApiKeyPublic(ApiKey):
    pass


@dataclass(frozen=True)
class ApiKeyCreated(ApiKeyPublic):
    key: Annotated[str, Field(description="The key itself; shown only in this response")]


# -- executing a prompt: OpenAI's chat-completions body, with the prompt key as `model` ---------
# TypedDicts validated by a TypeAdapter straight from the JSON bytes: the executor takes the body
# as a dict (so do the CLI and the eval runner), and validating into a dict costs about what
# json.loads costs, where a BaseModel's model_dump would add as much again on the hot path.


@with_config(ConfigDict(extra="allow"))
class ChatMessage(TypedDict):
    """One turn of the caller's conversation. Passed upstream as it came, with any field OpenAI
    defines for it (`name`, `tool_calls`, `tool_call_id`, ...)."""

    role: Annotated[str, Field(description="system, user, assistant, tool, ...")]
    content: NotRequired[
        Annotated[
            str | list[Any] | dict[str, Any] | None,
            Field(
                description="Text, content parts, or (LLMKit's convention) a JSON object of"
                " template variables in the first system or user message"
            ),
        ]
    ]


@with_config(ConfigDict(extra="allow"))
class StreamOptions(TypedDict, total=False):
    include_usage: Annotated[bool | None, Field(description="Send a usage chunk before [DONE]")]


@with_config(ConfigDict(extra="allow"))
class ResponseFormat(TypedDict):
    type: Annotated[str, Field(description="text, json_object or json_schema (with json_schema)")]


class CompletionParams(TypedDict, total=False):
    """Everything a call may send besides `model`; the prompt's settings are the defaults."""

    messages: Annotated[
        list[ChatMessage] | None,
        Field(description="The caller's conversation (chat prompts pass it through)"),
    ]
    variables: Annotated[
        dict[str, Any] | None, Field(description="Template variables (SDKs send it in extra_body)")
    ]
    model_override: Annotated[
        str | None,
        Field(
            description="Run the prompt on this model instead of its own: an alias of"
            " llmkit.yaml or a model a served prompt uses (as GET /v1/ui/models lists them)"
        ),
    ]
    stream: Annotated[bool | None, Field(description="Answer as server-sent events")]
    stream_options: StreamOptions | None
    metadata: dict[str, Any] | None
    store: bool | None
    max_tokens: int | None
    max_completion_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: str | list[str] | None
    seed: int | None
    n: int | None
    user: str | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    response_format: ResponseFormat | None
    presence_penalty: float | None
    frequency_penalty: float | None
    parallel_tool_calls: bool | None
    logit_bias: dict[str, float] | None
    logprobs: bool | None
    top_logprobs: int | None
    reasoning_effort: str | None


@with_config(ConfigDict(extra="forbid", title="ChatCompletionRequest"))
class ChatCompletionRequest(CompletionParams):
    """OpenAI's chat-completions body; `model` names the prompt. A field outside these is
    refused by name (400)."""

    model: Required[
        Annotated[
            str,
            Field(description="Prompt key, optionally pinned: key@7, key@3fa9c1e, key@production"),
        ]
    ]


@with_config(ConfigDict(extra="forbid", title="PromptExecuteRequest"))
class PromptExecuteRequest(CompletionParams, total=False):
    """The body of `/v1/ui/prompts/execute/{id}`: the path names the prompt, so `model` may be
    left out (it is ignored when given)."""

    model: Annotated[str | None, Field(description="Ignored: the path names the prompt")]


# -- eval cases and scores: read like the execution bodies (deps.parse_body), so that a bad field
# is a 400 naming it. The case's own checks (`evals.spec`) then say what is wrong inside a value.

Variables = dict[str, Any]

# A functional TypedDict: `assert` is a Python keyword.
EvalCaseWrite = TypedDict(
    "EvalCaseWrite",
    {
        "prompt_key": Annotated[str | None, Field(description="The prompt's key")],
        "prompt_id": Annotated[
            int | str | None, Field(description="The prompt's id or key (LLMKit's field)")
        ],
        "name": Annotated[str | None, Field(description="Unique among the prompt's cases")],
        "description": str | None,
        "vars": Annotated[Variables | None, Field(description="Template variables")],
        "user_vars": Annotated[
            Variables | None, Field(description="Variables of the user sections only")
        ],
        "messages": Annotated[list[Any] | None, Field(description="The conversation to send")],
        "input": Annotated[str | None, Field(description="A single user message")],
        "model": Annotated[str | None, Field(description="Run on this model or alias instead")],
        "repeat": int | None,
        "threshold": float | None,
        "assert": Annotated[list[Any] | None, Field(description="The case's assertions")],
        "input_data": Annotated[
            Variables | str | None,
            Field(
                description="LLMKit's field: the template variables, as an object or a string"
                " holding one (the case's `vars`)"
            ),
        ],
        "system_prompt_input": Annotated[
            str | None, Field(description="LLMKit's field: system variables as JSON text")
        ],
        "user_prompt_input": Annotated[
            str | None,
            Field(description="LLMKit's field: user variables as JSON text, or the user message"),
        ],
        # Read-only fields a client may send back as it got them: ignored.
        "id": int | str | None,
        "evaluation_type": str | None,
        "file": str | None,
        "line": int | None,
        "created_at": str | None,
        "updated_at": str | None,
    },
    total=False,
)
# Strict: a value of the wrong JSON type is refused, never converted ("3" is not a repeat count).
EvalCaseWrite.__pydantic_config__ = ConfigDict(  # type: ignore[attr-defined]
    extra="forbid", strict=True, title="EvalCaseWrite"
)
EvalCaseWrite.__doc__ = """Create or change an eval case (fields not given keep their values on a
change). Ours and LLMKit's fields; a field outside these is refused by name (400)."""


@with_config(ConfigDict(extra="forbid", title="EvalScoreUpdate"))
class EvalScoreUpdate(TypedDict, total=False):
    """A human score for one eval result."""

    score: Required[
        Annotated[int, Field(strict=True, ge=1, le=5, description="A whole number from 1 to 5")]
    ]
    id: Annotated[int | None, Field(description="The result's id (LLMKit's UI sends it)")]

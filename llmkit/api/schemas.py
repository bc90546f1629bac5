"""Request and response bodies, named by role."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    scope: str
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(..., description="The key itself; shown only in this response")

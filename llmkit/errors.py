"""One error hierarchy. Each error carries its HTTP status and OpenAI error type, so the API
turns it into OpenAI's error JSON and the CLI into a one-line message, each in one place."""

from __future__ import annotations

from typing import Any


class LlmkitError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(LlmkitError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class InvalidKey(BadRequest):
    """A prompt key or a path that is not allowed."""

    code = "invalid_key"


class PromptFormatError(BadRequest):
    """A prompt or eval file that cannot be read. Names the file and line."""

    code = "invalid_prompt_file"

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")
        self.detail = message


class TemplateError(BadRequest):
    code = "template_error"


class MissingVariables(TemplateError):
    code = "missing_variables"

    def __init__(self, names: list[str], where: str = "") -> None:
        self.names = names
        super().__init__(f"Missing variables{where}: {', '.join(names)}", param="variables")


class RenderBudgetExceeded(TemplateError):
    """A render that would exceed a budget of llmkit.yaml's `limits:` (CPU time, output size,
    range length) or the macro depth: a 422, as the request is well-formed and the template
    valid, but the two together cannot be rendered within bounds."""

    status = 422
    code = "render_budget_exceeded"


class Unauthorized(LlmkitError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(LlmkitError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(LlmkitError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(LlmkitError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(LlmkitError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Unprocessable(LlmkitError):
    status = 422
    type = "invalid_request_error"
    code = "validation_error"


class RateLimited(LlmkitError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(LlmkitError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(LlmkitError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class ConfigError(LlmkitError):
    """A problem with the repository or llmkit.yaml; the CLI exits 2 on it."""

    status = 500
    type = "server_error"
    code = "config_error"

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


class RequestTimeout(LlmkitError):
    """The request body did not arrive in time (a client that sends it slowly, or never)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


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


class RepositoryBusy(LlmkitError):
    """Another git process holds a lock a write needs (`.git/index.lock`, a ref lock). Nothing
    was written; the same request succeeds once that process is done."""

    status = 503
    type = "server_error"
    code = "repository_busy"


class UpstreamError(LlmkitError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream at all: refused, an unknown host, a failed TLS handshake,
    or none made within the connect timeout. Almost always a wrong `api_base` or a server that
    is down, which a retry a second later does not change: the same model is not retried (its
    fallbacks are tried), and the message names the URL that was tried."""

    code = "upstream_unreachable"


class UpstreamTimeout(LlmkitError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class RunLogUnavailable(LlmkitError):
    """Durable logging is on and the call's run-log row was not committed: the answer is held
    back rather than sent unlogged."""

    status = 503
    type = "server_error"
    code = "run_log_unavailable"


class DatabaseUnavailable(LlmkitError):
    """The durable store (PostgreSQL) cannot be reached just now. Reads answer this; the run
    log's writer keeps its rows queued and reconnects."""

    status = 503
    type = "server_error"
    code = "database_unavailable"


class UpstreamPoolFull(LlmkitError):
    """Every connection to an upstream is in use and none came free within the pool's acquire
    timeout. Answered at once rather than queued without end; clients may retry shortly."""

    status = 503
    type = "server_error"
    code = "upstream_pool_full"


class ClientGone(LlmkitError):
    """The client of a stream disconnected or stopped reading. Never sent (nobody is there to
    read it): it ends the stream and names the reason in the run log, whose status for it is
    499, as web servers log a client that closed its request."""

    status = 499
    type = "invalid_request_error"
    code = "client_gone"


class ConfigError(LlmkitError):
    """A problem with the repository or llmkit.yaml; the CLI exits 2 on it."""

    status = 500
    type = "server_error"
    code = "config_error"


class ProviderNotConfigured(ConfigError):
    """The server's environment lacks the API key a model's provider needs. The caller's llmkit
    key is fine, so this is not a 401 (which clients take for their own key's fault): it is a
    503 naming the variable to set, and the CLI exits 2 on it, as on any configuration error."""

    status = 503
    type = "server_error"
    code = "provider_not_configured"

    def __init__(self, message: str, *, provider: str, key_env: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.key_env = key_env


class IndexUnavailable(LlmkitError):
    """The index could not catch up with the repository (its database stayed locked, or
    reading the repository kept failing); what is in git is unaffected."""

    status = 503
    type = "server_error"
    code = "index_unavailable"


def clipped(text: str, limit: int) -> str:
    """`text` as an error message quotes it: whole, or cut to `limit` characters ending in
    "...", so that a huge input cannot flood the message or a log."""
    return text if len(text) <= limit else text[: limit - 3] + "..."

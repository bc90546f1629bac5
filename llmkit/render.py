"""Templates: Jinja2 in a sandbox, with the semantics of LLMKit's Tera templates.

- An undefined variable in output is an error naming *every* missing variable at once, while
  `{% if undefined %}` is simply false.
- Booleans render `true`/`false`, None renders as nothing; no autoescape; trailing newline kept.
- Templates are rendered per message, after the roles are split, so a variable's value that
  contains a role marker stays text inside its own message.
- Attribute access to private or dunder names is refused by the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmkit.errors import MissingVariables, TemplateError
from llmkit.promptfile import TEMPLATE_RE, PromptFile

# The names found missing by the render under way in this thread or task.
_missing: ContextVar[set[str] | None] = ContextVar("llmkit_missing_variables", default=None)


class _RecordingUndefined(Undefined):
    """Records its name wherever it would be printed or iterated; falsy in conditions."""

    __slots__ = ()

    def _record(self) -> None:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()
        missing = _missing.get()
        if missing is not None:
            name = self._undefined_name
            missing.add(str(name if name is not None else self._undefined_obj))

    def __str__(self) -> str:
        self._record()
        return ""

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._record()
        return iter(())

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__":
            raise AttributeError(name)
        self._record()
        return self

    def __getitem__(self, key: Any) -> Any:
        self._record()
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._record()
        return self

    __len__ = Undefined.__len__
    __bool__ = Undefined.__bool__
    __eq__ = Undefined.__eq__
    __ne__ = Undefined.__ne__
    __hash__ = Undefined.__hash__


def _finalize(value: Any) -> Any:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return value


# Immutable: a template must not change the caller's lists and dicts (`{{ items.append(1) }}`),
# which may be reused for the next render.
_env = ImmutableSandboxedEnvironment(
    autoescape=False,
    keep_trailing_newline=True,
    undefined=_RecordingUndefined,
    finalize=_finalize,
)


@lru_cache(maxsize=4096)
def compile_template(source: str):  # type: ignore[no-untyped-def]
    """Compile once per distinct source; raises TemplateError with the template line."""
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, source) from None


def _syntax_error(exc: TemplateSyntaxError, source: str) -> TemplateError:
    err = TemplateError(f"Template syntax error on line {exc.lineno}: {exc.message}")
    err.template_line = exc.lineno  # type: ignore[attr-defined]
    err.template_message = exc.message  # type: ignore[attr-defined]
    return err


def render(source: str, variables: Mapping[str, Any]) -> str:
    """Render one template. Static text (no template syntax) is returned as is."""
    if not TEMPLATE_RE.search(source):
        return source
    text, missing = _render_collect(source, variables)
    if missing:
        raise MissingVariables(sorted(missing))
    return text


def _render_collect(source: str, variables: Mapping[str, Any]) -> tuple[str, set[str]]:
    template = compile_template(source)
    missing: set[str] = set()
    token = _missing.set(missing)
    try:
        text = template.render(dict(variables))
    except SecurityError as exc:
        raise TemplateError(f"Template refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"Template error: {exc}") from None
    except TemplateError:
        raise
    except Exception as exc:  # a template can raise anything its expressions raise
        raise TemplateError(f"Template error: {type(exc).__name__}: {exc}") from None
    finally:
        _missing.reset(token)
    return text, missing


def variables_of(source: str) -> set[str]:
    """Top-level names a template reads (those it does not set itself)."""
    if not TEMPLATE_RE.search(source):
        return set()
    from jinja2 import meta

    try:
        return set(meta.find_undeclared_variables(_env.parse(source)))
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, source) from None


def render_messages(
    prompt: PromptFile,
    variables: Mapping[str, Any] | None = None,
    user_variables: Mapping[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Render each section of `prompt` as its own message.

    System sections take `variables`; user and assistant sections take `user_variables` when
    given (LLMKit's separate user variables), else `variables`. Every missing variable across
    all sections is named in one error.
    """
    variables = variables or {}
    rendered: list[dict[str, str]] = []
    missing: set[str] = set()
    for message in prompt.messages:
        scope = variables if message.role == "system" or user_variables is None else user_variables
        if TEMPLATE_RE.search(message.content):
            text, absent = _render_collect(message.content, scope)
            missing |= absent
        else:
            text = message.content
        rendered.append({"role": message.role, "content": text})
    if missing:
        raise MissingVariables(sorted(missing))
    return rendered


def check_templates(prompt: PromptFile) -> list[tuple[int, str]]:
    """Syntax problems of every section as (file line, message), for lint."""
    problems = []
    for i, message in enumerate(prompt.messages):
        if not TEMPLATE_RE.search(message.content):
            continue
        try:
            compile_template(message.content)
        except TemplateError as exc:
            base = prompt.lines[i] if i < len(prompt.lines) else 1
            line = base + getattr(exc, "template_line", 1) - 1
            # The file line replaces the template-relative one in the message.
            detail = getattr(exc, "template_message", None)
            problems.append((line, f"Template syntax error: {detail}" if detail else exc.message))
    return problems


__all__ = [
    "render",
    "render_messages",
    "variables_of",
    "check_templates",
    "compile_template",
]

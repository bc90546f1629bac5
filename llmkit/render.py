"""Templates: Jinja2 in a sandbox, with the semantics of LLMKit's Tera templates, within budgets.

- An undefined variable in output is an error naming *every* missing variable at once, while
  `{% if undefined %}` is simply false.
- Booleans render `true`/`false`, None renders as nothing; no autoescape; trailing newline kept.
- Templates are rendered per message, after the roles are split, so a variable's value that
  contains a role marker stays text inside its own message.
- Attribute access to private or dunder names is refused by the sandbox.
- Every render is bounded by the `Limits` of llmkit.yaml (output size, CPU time, `range()`
  length; see `sandbox`). A render over budget is `RenderBudgetExceeded` (HTTP 422) naming the
  file, line and budget; a template that nests too deeply to compile is a syntax error with its
  line, not a RecursionError.

The API renders on threads of its own (`Executor.aprepare`), so a render that burns its budget
costs other requests a share of the CPU, not their answers. A template that only substitutes
variables (`renders_quickly`) is the exception: it cannot loop, call or build, so it costs time
linear in the request, like parsing the request's body, and renders inline without a thread hop
(measured at 0.2 to 0.6 ms of CPU per request in the gateway).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import TracebackType
from typing import Any

from jinja2 import Template, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.utils import missing

from llmkit.budgets import DEFAULT_LIMITS, Limits
from llmkit.errors import MissingVariables, RenderBudgetExceeded, TemplateError
from llmkit.promptfile import TEMPLATE_RE, PromptFile
from llmkit.sandbox import BudgetedEnvironment, OverBudget, RenderState, current_render, guarded

# Distinct missing attributes kept for naming; a loop over many items each lacking one would
# otherwise keep every item.
_MAX_MISSING_ATTRIBUTES = 100


class _RecordingUndefined(Undefined):
    """Records its name wherever it would be printed or iterated; falsy in conditions."""

    __slots__ = ()

    def _record(self) -> None:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()
        render = current_render.get()
        if render is None:
            return
        name = self._undefined_name
        if self._undefined_obj is missing or name is None:
            render.missing.add(str(name if name is not None else self._undefined_obj))
        elif len(render.missing_attributes) < _MAX_MISSING_ATTRIBUTES:
            # An attribute or item of a value the caller gave: named by its path afterwards.
            key = (id(self._undefined_obj), str(name))
            render.missing_attributes.setdefault(key, (self._undefined_obj, str(name)))

    def __str__(self) -> str:
        self._record()
        return ""

    def __iter__(self):
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
_env = BudgetedEnvironment(
    autoescape=False,
    keep_trailing_newline=True,
    undefined=_RecordingUndefined,
    finalize=_finalize,
    optimized=False,
)


def compile_template(source: str) -> Template:
    """Compile once per distinct source; raises TemplateError with the template line."""
    compiled = _compiled(source)
    if isinstance(compiled, TemplateError):
        raise compiled
    return compiled


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Template | TemplateError:
    # Failures are cached too: a template that nests too deeply fails the same way every time,
    # and finding that out may take a while.
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        return _syntax_error(exc.message or "invalid syntax", exc.lineno)
    except Exception as exc:  # Jinja's or Python's parser and compiler giving up: too deep
        return _syntax_error(
            "the template nests too deeply, or an expression is too long, to compile"
            f" ({type(exc).__name__})",
            _hardest_line(source),
        )


def _syntax_error(message: str, line: int) -> TemplateError:
    err = TemplateError(f"Template syntax error on line {line}: {message}")
    err.template_line = line  # type: ignore[attr-defined]
    err.template_message = message  # type: ignore[attr-defined]
    return err


_BLOCK_TAGS = frozenset({"if", "for", "macro", "call", "filter", "with", "autoescape", "block"})
# Nesting this deep is what makes a compiler give up; below it, the longest tag is to blame.
_DEEP = 20


def _hardest_line(source: str) -> int:
    """The line most likely to have defeated the compiler: where brackets and block tags nest
    deepest, or else where the tag with the most tokens starts (`x | e | e | ...`). Read from
    the tokens, which never recurse."""
    depth = deepest = tokens = most_tokens = 0
    deepest_line = longest_line = tag_line = 1
    after_block_begin = False
    try:
        for lineno, kind, value in _env.lex(source):
            if kind in ("variable_begin", "block_begin"):
                tokens, tag_line = 0, lineno
            elif kind != "whitespace":
                tokens += 1
                if tokens > most_tokens:
                    most_tokens, longest_line = tokens, tag_line
            if kind == "operator" and value in "([{":
                depth += 1
            elif kind == "operator" and value in ")]}":
                depth -= 1
            elif after_block_begin and kind == "name":
                if value in _BLOCK_TAGS:
                    depth += 1
                elif value.startswith("end"):
                    depth -= 1
            if kind != "whitespace":
                after_block_begin = kind == "block_begin"
            if depth > deepest:
                deepest, deepest_line = depth, lineno
    except TemplateSyntaxError:
        pass
    return deepest_line if deepest >= _DEEP else longest_line


# -- what renders quickly --------------------------------------------------------------------

# Nodes of a template that only substitutes variables: each costs time linear in the values it
# reads and writes, and none can loop, call, recurse or multiply.
_QUICK_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Getattr,
    nodes.Getitem,
    nodes.If,
    nodes.Not,
    nodes.And,
    nodes.Or,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Compare,
    nodes.Operand,
    nodes.Filter,
    nodes.Test,
)
_QUICK_FILTERS = frozenset({"default", "d", "trim", "upper", "lower", "string"})
_QUICK_TESTS = frozenset({"defined", "undefined", "none", "true", "false", "string", "number"})
_QUICK_COMPARISONS = frozenset({"eq", "ne", "lt", "gt", "lteq", "gteq"})


def renders_quickly(prompt: PromptFile) -> bool:
    """Whether every template of `prompt` only substitutes variables: names, attributes and
    items, constants, `if`, `and`/`or`/`not`, comparisons, `~` and a few linear filters
    (`default`, `trim`, `upper`, `lower`, `string`). Such a render costs time linear in the
    request, and may run on the event loop."""
    return all(_quick(m.content) for m in prompt.messages if TEMPLATE_RE.search(m.content))


@lru_cache(maxsize=4096)
def _quick(source: str) -> bool:
    try:
        compile_template(source)
        stack: list[nodes.Node] = [_env.parse(source)]
    except TemplateError:
        return False  # its error is raised where it renders
    while stack:
        node = stack.pop()
        if not isinstance(node, _QUICK_NODES):
            return False
        if isinstance(node, nodes.Filter) and node.name not in _QUICK_FILTERS:
            return False
        if isinstance(node, nodes.Test) and node.name not in _QUICK_TESTS:
            return False
        if isinstance(node, nodes.Operand) and node.op not in _QUICK_COMPARISONS:
            return False
        if isinstance(node, (nodes.Filter, nodes.Test)) and (node.dyn_args or node.dyn_kwargs):
            return False
        if isinstance(node, nodes.Name) and node.ctx != "load":
            return False
        stack.extend(node.iter_child_nodes())
    return True


# -- rendering -------------------------------------------------------------------------------


def render(source: str, variables: Mapping[str, Any], limits: Limits | None = None) -> str:
    """Render one template. Static text (no template syntax) is returned as is."""
    if not TEMPLATE_RE.search(source):
        return source
    render_ = RenderState(limits or DEFAULT_LIMITS)
    text = _render_sections([(source, variables, 1)], render_, None)[0]
    if render_.missing or render_.missing_attributes:
        raise _missing_error(render_, [(source, variables, 1)], None)
    return text


def render_messages(
    prompt: PromptFile,
    variables: Mapping[str, Any] | None = None,
    user_variables: Mapping[str, Any] | None = None,
    *,
    limits: Limits | None = None,
    path: str | None = None,
) -> list[dict[str, str]]:
    """Render each section of `prompt` as its own message, within `limits` for them all.

    System sections take `variables`; user and assistant sections take `user_variables` when
    given (LLMKit's separate user variables), else `variables`. Every missing variable across
    all sections is named in one error. `path` (the prompt's file) starts error messages, whose
    lines are the file's.
    """
    variables = variables or {}
    jobs: list[tuple[str, Mapping[str, Any], int]] = []
    for i, message in enumerate(prompt.messages):
        if TEMPLATE_RE.search(message.content):
            own = message.role == "system" or user_variables is None
            scope = variables if own or user_variables is None else user_variables
            first_line = prompt.lines[i] if i < len(prompt.lines) else 1
            jobs.append((message.content, scope, first_line))
    render_ = RenderState(limits or DEFAULT_LIMITS)
    texts = iter(_render_sections(jobs, render_, path) if jobs else [])
    rendered = [
        {"role": m.role, "content": next(texts) if TEMPLATE_RE.search(m.content) else m.content}
        for m in prompt.messages
    ]
    if render_.missing or render_.missing_attributes:
        raise _missing_error(render_, jobs, path)
    return rendered


def _missing_error(
    render_: RenderState, jobs: list[tuple[str, Mapping[str, Any], int]], path: str | None
) -> MissingVariables:
    """Every missing name, an attribute or item by its dotted path (`user.profile`), in one
    error; with `path`, it starts at the file line where the first of them is read."""
    trees = [(_env.parse(source), variables, first_line) for source, variables, first_line in jobs]
    lines: dict[str, int | None] = {}
    for name in render_.missing:
        lines[name] = next(
            (
                first_line + node.lineno - 1
                for tree, _, first_line in trees
                for node in tree.find_all(nodes.Name)
                if node.name == name and node.ctx == "load"
            ),
            None,
        )
    for value, attribute in render_.missing_attributes.values():
        dotted, line = _attribute_path(trees, value, attribute)
        lines.setdefault(dotted, line)
    err = MissingVariables(sorted(lines))
    known = [line for line in lines.values() if line is not None]
    if path is not None:
        where = f"{path}:{min(known)}: " if known else f"{path}: "
        err.message = where + err.message
        err.args = (err.message,)
    return err


def _attribute_path(
    trees: list[tuple[nodes.Template, Mapping[str, Any], int]], value: object, attribute: str
) -> tuple[str, int | None]:
    """The path (`user.profile`) and file line of the expression that read `attribute` of
    `value` and found nothing: among the expressions reading that attribute, the one whose
    path leads to `value` in the variables, else the first; the bare name if there is none."""
    candidates = []
    for tree, variables, first_line in trees:
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
                continue  # find_all yields only these; this tells the type checker
            if _step_name(node) != attribute:
                continue
            dotted = _dotted(node)
            line = first_line + node.lineno - 1
            if _resolve(node.node, variables) is value:
                return dotted, line
            candidates.append((dotted, line))
    return candidates[0] if candidates else (attribute, None)


def _step_name(node: nodes.Getattr | nodes.Getitem) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    return str(node.arg.value) if isinstance(node.arg, nodes.Const) else None


def _dotted(node: nodes.Node) -> str:
    """`user.profile`, `items[0].name`, `row["a b"]`, `users[...]` for a computed index."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_dotted(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        key = node.arg.value if isinstance(node.arg, nodes.Const) else ...
        if isinstance(key, str) and key.isidentifier():
            return f"{_dotted(node.node)}.{key}"
        return f"{_dotted(node.node)}[{'...' if key is ... else repr(key)}]"
    return "(...)"


_UNRESOLVED = object()


def _resolve(node: nodes.Node, variables: Mapping[str, Any]) -> Any:
    """The value a chain of names, attributes and constant items reads from `variables`, or
    a marker when it reads anything else (a loop variable, a call, a computed index)."""
    if isinstance(node, nodes.Name):
        return variables.get(node.name, _UNRESOLVED)
    if isinstance(node, nodes.Getattr):
        base = _resolve(node.node, variables)
        found = _UNRESOLVED if base is _UNRESOLVED else _env.getattr(base, node.attr)
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        base = _resolve(node.node, variables)
        found = _UNRESOLVED if base is _UNRESOLVED else _env.getitem(base, node.arg.value)
    else:
        return _UNRESOLVED
    return _UNRESOLVED if isinstance(found, Undefined) else found


def _render_sections(
    jobs: list[tuple[str, Mapping[str, Any], int]], render_: RenderState, path: str | None
) -> list[str]:
    """Render (source, variables, first file line) sections as one render, within one budget."""
    compiled = []
    for source, variables, first_line in jobs:
        try:
            compiled.append((compile_template(source), variables, first_line))
        except TemplateError as exc:
            raise _located(exc, path, first_line) from None
    cap = render_.limits.render_output_chars
    texts: list[str] = []

    def produce() -> list[str]:
        for template, variables, _ in compiled:
            parts = []
            for chunk in template.root_render_func(template.new_context(dict(variables))):
                render_.chars += len(chunk)
                if render_.chars > cap:
                    raise OverBudget("render_output_chars", f"output over {cap:,} characters")
                parts.append(chunk)
            texts.append("".join(parts))
        return texts

    def where(tb: TracebackType | None) -> str:
        # The section being rendered is the one after those already done.
        template, _, first_line = compiled[min(len(texts), len(compiled) - 1)]
        line = first_line + _template_line(template, tb) - 1
        return f"{path}:{line}: " if path else f"Line {line}: "

    token = current_render.set(render_)
    try:
        return guarded(render_, produce)
    except OverBudget as exc:
        budget = exc.limit.startswith("render_")
        raise RenderBudgetExceeded(
            f"{where(exc.tb or exc.__traceback__)}the template exceeded its render budget:"
            f" {exc.detail}" + (f" (limits.{exc.limit} in llmkit.yaml)" if budget else ""),
            param=f"limits.{exc.limit}" if budget else None,
        ) from None
    except SecurityError as exc:
        raise TemplateError(
            f"{where(exc.__traceback__)}Template refused by the sandbox: {exc}"
        ) from None
    except UndefinedError as exc:
        raise TemplateError(f"{where(exc.__traceback__)}Template error: {exc}") from None
    except TemplateError:
        raise
    except Exception as exc:  # a template can raise anything its expressions raise
        raise TemplateError(
            f"{where(exc.__traceback__)}Template error: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        current_render.reset(token)


def _template_line(template: Template, tb: TracebackType | None) -> int:
    """The template line of the innermost template frame in a traceback; 1 if none."""
    line = 1
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


def _located(exc: TemplateError, path: str | None, first_line: int) -> TemplateError:
    """A syntax error with the file's line, when the file is known."""
    if path is None:
        return exc
    line = first_line + getattr(exc, "template_line", 1) - 1
    detail = getattr(exc, "template_message", None) or exc.message
    return TemplateError(f"{path}:{line}: Template syntax error: {detail}")


def variables_of(source: str) -> set[str]:
    """Top-level names a template reads (those it does not set itself)."""
    if not TEMPLATE_RE.search(source):
        return set()
    from jinja2 import meta

    compile_template(source)  # a template too deep to parse fails here, with its line
    try:
        return set(meta.find_undeclared_variables(_env.parse(source)))
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc.message or "invalid syntax", exc.lineno) from None


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
    "check_templates",
    "compile_template",
    "render",
    "render_messages",
    "renders_quickly",
    "variables_of",
]

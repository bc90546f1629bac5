"""docs/reference.md stays true, as datasette's test_docs.py keeps its documentation true.

Everything the reference must cover is read from the code when the test runs (frontmatter keys,
alias fields, limits, eval keys, assertion types, settings and every other LLMKIT_* variable,
commands and their options, routes, error codes), so a key, command, route or code added
anywhere fails here, naming what is undocumented. Every example prompt file, eval file and
llmkit.yaml in the reference is parsed by llmkit's own readers, and every example of the echo
model is answered by the echo model, so examples cannot rot.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest

from llmkit import budgets, config, errors, models, promptfile
from llmkit.cli import main
from llmkit.providers import echo
from tests.api_fixtures import ApiEnv, app_routes

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
PACKAGE = ROOT / "llmkit"

# Where the eval file's keys and reader may live; the first module that has a name wins.
EVAL_SPEC_MODULES = (
    "llmkit.evals.spec",
    "llmkit.evals.keys",
    "llmkit.evals.schema",
    "llmkit.evals.fields",
    "llmkit.evals.files",
    "llmkit.evals.cases",
    "llmkit.evals",
)
FENCE_RE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
ROW_RE = re.compile(r"^\|([^|\n]*)\|(.*)$", re.MULTILINE)
CODE_RE = re.compile(r"`([^`]+)`")


# -- reading the reference -------------------------------------------------------------------


def reference() -> str:
    assert REFERENCE.is_file(), "docs/reference.md is missing"
    return REFERENCE.read_text("utf-8")


def masked(text: str) -> str:
    """`text` with the `#` that starts a line inside a code block blanked, so that a comment in
    an example is never taken for a heading; offsets stay those of `text`."""
    return FENCE_RE.sub(lambda m: re.sub(r"(?m)^#", " ", m.group(0)), text)


def headings(text: str, level: int) -> list[tuple[str, str]]:
    """(heading text, body up to the next heading of `level` or above) in order."""
    pattern = re.compile(
        rf"^{'#' * level} ([^\n]+)\n(?:.*?)(?=^#{{1,{level}}} |\Z)", re.MULTILINE | re.DOTALL
    )
    return [
        (m.group(1).strip(), text[m.end(1) + 1 : m.end()]) for m in pattern.finditer(masked(text))
    ]


def section(title: str, text: str | None = None, level: int = 2) -> str:
    """The text under the heading `title` (at `level`, backticks aside) up to the next heading
    of that level or above."""
    text = reference() if text is None else text
    for heading, body in headings(text, level):
        if CODE_RE.sub(r"\1", heading) == title:
            return body
    pytest.fail(f"docs/reference.md has no {'#' * level} {title} heading")


def subsections(text: str, level: int) -> dict[str, str]:
    """Heading text -> body, for every heading of `level` in `text`."""
    return dict(headings(text, level))


def rows(text: str) -> dict[str, str]:
    """Each name in backticks in the first cell of a table row -> that whole row."""
    found: dict[str, str] = {}
    for first, rest in ROW_RE.findall(text):
        for name in CODE_RE.findall(first):
            found.setdefault(name.strip(), f"|{first}|{rest}")
    return found


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, text) of every fenced code block in `text`."""
    return FENCE_RE.findall(text)


def shown(value: Any) -> str:
    """A default value as the reference writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def missing_rows(names: Any, text: str, what: str) -> list[str]:
    documented = rows(text)
    return [
        f"{what} {name!r} is not in docs/reference.md" for name in names if name not in documented
    ]


# -- what the code holds ---------------------------------------------------------------------


def eval_spec(name: str) -> Any:
    """`name` from the module that holds eval files' keys and reader, wherever it now lives."""
    for module_name in EVAL_SPEC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    pytest.fail(
        f"no module of {', '.join(EVAL_SPEC_MODULES)} defines {name}: tell this test"
        " where the eval file's keys and reader live now"
    )


def assertion_types() -> dict[str, Any]:
    from llmkit.evals.asserts import ASSERTIONS

    return ASSERTIONS


def alias_fields() -> set[str]:
    """The keys an alias of llmkit.yaml takes: the named fields, and `params`, which is what
    every other key becomes (ModelTarget's `name` is the alias itself; `alias` and `keyless`,
    which `api_key_env: null` sets, are derived)."""
    derived = {f.name for f in fields(models.ModelTarget)} - {"name", "alias", "keyless"}
    return set(models.ALIAS_FIELDS) | derived


def walk_commands(command: click.Command, path: str = "llmkit") -> Iterator[tuple[str, Any]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk_commands(sub, f"{path} {name}")


def settings_variables() -> dict[str, Any]:
    """LLMKIT_<FIELD> of every setting -> its default (None when it has none)."""
    return {
        config.ENV_PREFIX + name.upper(): (None if field.is_required() else field.default)
        for name, field in config.Settings.model_fields.items()
    }


def package_sources() -> Iterator[tuple[Path, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.read_text("utf-8")


ENV_NAME_RES = (
    re.compile(r"""["'](LLMKIT_[A-Z0-9_]*[A-Z0-9])["']"""),  # os.environ.get("LLMKIT_X")
    re.compile(r"\$(LLMKIT_[A-Z0-9_]*[A-Z0-9])"),  # "$LLMKIT_X" in a help text
    re.compile(r"""ENV_PREFIX\s*\+\s*["']([A-Z0-9_]+)["']"""),  # ENV_PREFIX + "X"
)


def environment_variables() -> set[str]:
    """Every LLMKIT_* variable named as a string anywhere in the package."""
    found = set()
    for _, source in package_sources():
        for pattern in ENV_NAME_RES:
            for name in pattern.findall(source):
                found.add(name if name.startswith("LLMKIT_") else config.ENV_PREFIX + name)
    return found


def error_classes() -> list[type[errors.LlmkitError]]:
    seen: list[type[errors.LlmkitError]] = []
    stack = [errors.LlmkitError]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return [cls for cls in seen if cls.__module__ == errors.__name__]


def error_codes() -> dict[str, set[int]]:
    """Every error code a client or the CLI can see -> the statuses it comes with (empty when
    the status cannot be told from the source): each error class's own code, and every code
    given at a raise site (`Conflict(..., code="case_conflict")`, `error_body(400, m, "x")`),
    literal or through a module-level constant."""
    codes: dict[str, set[int]] = {}
    for cls in error_classes():
        if cls.code is not None:
            codes.setdefault(cls.code, set()).add(cls.status)
    trees = [ast.parse(source, str(path)) for path, source in package_sources()]
    constants = {
        target.id: node.value.value
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def text_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    for tree in trees:
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
                continue
            raised = getattr(errors, call.func.id, None)
            keywords = {k.arg: k.value for k in call.keywords}
            statuses: set[int] = set()
            if isinstance(raised, type) and issubclass(raised, errors.LlmkitError):
                code = text_of(keywords["code"]) if "code" in keywords else None
                given = keywords.get("status")
                status = given.value if isinstance(given, ast.Constant) else raised.status
                statuses = {status} if isinstance(status, int) else set()
            elif call.func.id == "error_body" and len(call.args) >= 3:
                code = text_of(call.args[2])
                first = call.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, int):
                    statuses = {first.value}
            else:
                continue
            if code is not None:
                codes.setdefault(code, set()).update(statuses)
    return codes


def documented_routes(env: ApiEnv) -> list[str]:
    """`METHOD /path` of every route the API documents (FastAPI's own /docs pages aside)."""
    found = []
    for route in app_routes(env):
        if not getattr(route, "include_in_schema", False):
            continue
        path = getattr(route, "path_format", None) or route.path
        for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
            found.append(f"{method} {path}")
    return found


# -- every item is documented ----------------------------------------------------------------


def test_every_frontmatter_key_is_documented() -> None:
    problems = missing_rows(promptfile.FIELDS, section("Prompt files"), "frontmatter key")
    assert problems == [], "\n".join(problems)


def test_every_alias_field_and_limit_is_documented() -> None:
    text = section("llmkit.yaml")
    problems = missing_rows(sorted(alias_fields()), text, "llmkit.yaml alias field")
    documented = rows(section("limits", text, level=3))
    for limit in fields(budgets.Limits):
        row = documented.get(limit.name)
        if row is None:
            problems.append(f"llmkit.yaml limit {limit.name!r} is not in docs/reference.md")
        elif f"`{limit.default}`" not in row:
            problems.append(
                f"llmkit.yaml limit {limit.name!r}: its default `{limit.default}`"
                f" is not in its row: {row}"
            )
    assert problems == [], "\n".join(problems)


def test_every_eval_file_key_and_case_key_is_documented() -> None:
    text = section("Eval files")
    problems = missing_rows(
        eval_spec("MULTI_FILE_KEYS"), section("File keys", text, 3), "eval file key"
    )
    problems += missing_rows(eval_spec("CASE_KEYS"), section("Case keys", text, 3), "eval case key")
    problems += missing_rows(eval_spec("SINGLE_FILE_KEYS"), text, "eval file key")
    assert problems == [], "\n".join(problems)


def test_every_assertion_type_is_documented_with_its_keys_and_an_example() -> None:
    from llmkit.evals.asserts import COMMON_KEYS

    text = section("Assertions", section("Eval files"), level=3)
    problems = missing_rows(COMMON_KEYS, text, "key of every assertion")
    headed = {CODE_RE.sub(r"\1", title): body for title, body in subsections(text, 4).items()}
    for name, spec in assertion_types().items():
        body = headed.get(name)
        if body is None:
            problems.append(
                f"assertion type {name!r} is not in docs/reference.md"
                f" (a #### `{name}` heading under Assertions)"
            )
            continue
        problems += [
            f"key {key!r} of assertion type {name!r} is not in docs/reference.md"
            for key in spec.keys
            if f"`{key}`" not in body
        ]
        used = {
            a.type
            for source in eval_examples(body)
            for case in source.cases
            for a in case.assertions
        }
        if name not in used:
            problems.append(f"assertion type {name!r} has no example eval file using it")
    assert problems == [], "\n".join(problems)


def test_every_setting_and_environment_variable_is_documented() -> None:
    text = section("Settings")
    documented = rows(text)
    problems = []
    for variable, default in settings_variables().items():
        row = documented.get(variable)
        if row is None:
            problems.append(f"setting {variable} is not in docs/reference.md")
        elif default is not None and f"`{shown(default)}`" not in row:
            problems.append(
                f"setting {variable}: its default `{shown(default)}` is not in its row: {row}"
            )
    problems += missing_rows(
        sorted(environment_variables() - set(settings_variables())), text, "environment variable"
    )
    assert problems == [], "\n".join(problems)


def test_every_command_its_arguments_and_options_are_documented() -> None:
    headed: dict[str, tuple[str, str]] = {}
    for title, body in subsections(section("Command line"), 3).items():
        words = CODE_RE.findall(title)[0].split() if CODE_RE.search(title) else []
        path = " ".join(w for w in words if re.fullmatch(r"[a-z][a-z0-9-]*", w))
        headed[path] = (title, body)
    problems = []
    for path, command in walk_commands(main):
        if path not in headed:
            problems.append(
                f"command {path!r} is not in docs/reference.md"
                f" (a ### `{path} ...` heading under Command line)"
            )
            continue
        title, body = headed[path]
        documented = rows(body)
        for param in command.params:
            if isinstance(param, click.Argument):
                if param.human_readable_name not in title:
                    problems.append(
                        f"argument {param.human_readable_name} of {path!r} is not in"
                        f" its heading: {title}"
                    )
                continue
            problems += [
                f"option {flag} of {path!r} is not in docs/reference.md"
                for flag in (*param.opts, *param.secondary_opts)
                if flag not in documented
            ]
    assert problems == [], "\n".join(problems)


def test_every_route_is_documented(api: ApiEnv) -> None:
    routes = documented_routes(api)
    assert "POST /v1/chat/completions" in routes
    problems = missing_rows(routes, section("HTTP API"), "route")
    assert problems == [], "\n".join(problems)


def test_every_error_code_is_documented_with_its_status() -> None:
    codes = error_codes()
    assert {"bad_request", "case_conflict", "upstream_connection_error"} <= set(codes)
    documented = rows(section("Error codes"))
    problems = []
    for code, statuses in sorted(codes.items()):
        row = documented.get(code)
        if row is None:
            problems.append(f"error code {code!r} is not in docs/reference.md")
            continue
        problems += [
            f"error code {code!r}: status {status} is not in its row: {row}"
            for status in sorted(statuses)
            if not re.search(rf"\b{status}\b", row)
        ]
    assert problems == [], "\n".join(problems)


# -- examples parse --------------------------------------------------------------------------


def eval_examples(text: str) -> list[Any]:
    """Every yaml block of `text` read as an eval file; fails naming the first problem."""
    read_eval_text = eval_spec("read_eval_text")
    read = []
    for language, body in blocks(text):
        if language != "yaml":
            continue
        eval_file = read_eval_text(body, "evals/example/doc.yaml")
        assert eval_file.errors == [], f"eval example does not parse: {eval_file.errors}\n{body}"
        read.append(eval_file)
    return read


def test_every_prompt_file_example_parses() -> None:
    examples = [
        body
        for language, body in blocks(reference())
        if language == "markdown" and body.startswith("---\n")
    ]
    assert len(examples) >= 3
    for body in examples:
        prompt = promptfile.parse(body, "prompts/example.md")
        assert prompt.messages, f"prompt example has no messages:\n{body}"


def test_every_eval_file_example_parses() -> None:
    read = eval_examples(section("Eval files"))
    assert len(read) >= len(assertion_types())
    assert all(eval_file.cases for eval_file in read)


def test_every_llmkit_yaml_example_loads(tmp_path: Path) -> None:
    examples = [body for language, body in blocks(section("llmkit.yaml")) if language == "yaml"]
    assert examples
    for i, body in enumerate(examples):
        path = tmp_path / f"{i}" / "llmkit.yaml"
        path.parent.mkdir()
        path.write_text(body, "utf-8")
        registry = models.ModelRegistry(path)
        registry.aliases()  # raises ConfigError naming the problem
        assert registry.limits() is not None


def test_every_echo_example_is_what_echo_answers() -> None:
    """A json block holding `messages` is a request (its other keys are request parameters);
    the block after it is the answer: the reply's text, or its tool calls without ids."""
    found = iter(blocks(section("The echo model")))
    checked = 0
    for language, body in found:
        request = json.loads(body) if language == "json" else None
        if not isinstance(request, dict) or "messages" not in request:
            continue
        _, answer = next(found, ("", ""))
        params = {k: v for k, v in request.items() if k != "messages"}
        message = echo.complete("echo", request["messages"], params)["choices"][0]["message"]
        if message.get("tool_calls"):
            calls = [{"function": call["function"]} for call in message["tool_calls"]]
            assert json.loads(answer) == {"tool_calls": calls}, body
        else:
            assert message["content"] == answer.removesuffix("\n"), body
        checked += 1
    assert checked >= 3

"""Eval files: the cases under `evals/<prompt key>/*.yaml`, read, checked and written back.

A file holds one case (a mapping with `name`) or several (a `cases:` list) plus file-level
defaults (`prompt`, `vars`, `user_vars`, `assert`, `threshold`, `model`, `repeat`). A case's
`vars` and `user_vars` are merged over the file's, its assertions come before the file's, and
its `threshold`, `model` and `repeat` override the file's.

`threshold` is the fraction of (weighted) assertions that must pass for one run to pass, and
the fraction of runs that must pass when a case is repeated.

A case with no assertions is a warning, not an error: it still checks that the prompt renders
and the provider answers without an error, which makes a useful smoke test.

Assertions (their types, keys and checks) live in `asserts`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from llmkit.errors import InvalidKey, PromptFormatError
from llmkit.evals.asserts import (
    Assertion,
    assertion_to_dict,
    is_number,
    json_problem,
    read_assertion,
    type_name,
    unknown_key_message,
)
from llmkit.promptfile import surrogate_in, validate_key
from llmkit.store import scan_tree
from llmkit.yamlfile import Lines, YamlProblem, load

EVALS_DIR = "evals"
PROMPTS_DIR = "prompts"
EVAL_SUFFIXES = (".yaml", ".yml")

CASE_KEYS = (
    "name", "description", "vars", "user_vars", "messages", "input", "model", "repeat",
    "threshold", "assert",
)
FILE_DEFAULT_KEYS = ("vars", "user_vars", "assert", "threshold", "model", "repeat")
MULTI_FILE_KEYS = ("prompt", "cases", *FILE_DEFAULT_KEYS)
SINGLE_FILE_KEYS = ("prompt", *CASE_KEYS)

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")

# Read-only or LLMKit-only fields that case_from_dict accepts and ignores.
_IGNORED_API_KEYS = (
    "id", "file", "line", "prompt_id", "evaluation_type", "created_at", "updated_at",
)


@dataclass
class EvalCase:
    prompt_key: str
    name: str
    file: str = ""
    line: int | None = field(default=None, compare=False)
    vars: dict[str, Any] = field(default_factory=dict)
    user_vars: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    repeat: int = 1
    threshold: float = 1.0
    assertions: list[Assertion] = field(default_factory=list)
    description: str | None = None


@dataclass
class Problem:
    path: str
    line: int | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class EvalFile:
    path: str
    prompt_key: str | None
    cases: list[EvalCase]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


class EvalSpecError(PromptFormatError):
    """An eval file or case that cannot be used; `problems` holds every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(first.message + more, path=first.path or None, line=first.line)
        self.problems = problems


# --- prompt keys and paths ---------------------------------------------------------------


def prompt_key_problem(key: Any) -> str | None:
    """Why `key` is not a valid prompt key, or None."""
    try:
        validate_key(key)
    except InvalidKey as exc:
        return exc.message
    return None


def prompt_key_from_path(rel_path: str) -> str | None:
    """`evals/support/triage/basic.yaml` -> `support/triage`; None outside a key folder."""
    parts = PurePosixPath(rel_path).parts
    if len(parts) < 3 or parts[0] != EVALS_DIR:
        return None
    return "/".join(parts[1:-1])


def case_path(prompt_key: str, name: str) -> str:
    """The repo-relative file the API writes for a case: `evals/<key>/<slug of name>.yaml`."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower())[:80].strip("-.") or "case"
    return f"{EVALS_DIR}/{prompt_key}/{slug}.yaml"


# --- validation ----------------------------------------------------------------------------


class _Invalid:
    """Marks a value that failed validation (its problem is already recorded)."""


_INVALID = _Invalid()


class _Checker:
    def __init__(self, path: str, lines: Lines, default_line: int | None = 1) -> None:
        self.path = path
        self.lines = lines
        # A problem of the whole file is reported at its first line, as editors and GitHub
        # annotations want a line; API bodies have none.
        self.default_line = default_line
        self.problems: list[Problem] = []

    def error(self, line: int | None, message: str) -> _Invalid:
        self.problems.append(Problem(self.path, line or self.default_line, message))
        return _INVALID

    def warn(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.path, line or self.default_line, message, "warning"))

    def unknown_keys(self, data: dict[Any, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in allowed:
                self.error(self.lines.of(data, key), unknown_key_message(key, allowed, where))


def _check_text(c: _Checker, value: Any, line: int | None, what: str) -> Any:
    if not isinstance(value, str):
        return c.error(line, f"{what} must be a string, got {type_name(value)} {value!r}")
    return value


def _check_name(c: _Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, str) or not value.strip():
        return c.error(line, f"'name' must be a non-empty string, got {value!r}")
    if "\n" in value or "\r" in value:
        return c.error(line, f"'name' must be one line, got {value!r}")
    return value


def _check_model(c: _Checker, value: Any, line: int | None, what: str = "'model'") -> Any:
    if not isinstance(value, str) or not value.strip():
        return c.error(line, f"{what} must be a non-empty model name, got {value!r}")
    return value


def _check_variables(c: _Checker, value: Any, line: int | None, what: str) -> Any:
    if not isinstance(value, dict):
        return c.error(line, f"'{what}' must be a mapping of names to values, got {value!r}")
    if problem := json_problem(value, what):
        return c.error(line, problem)
    return value


MAX_REPEAT = 100


def _check_repeat(c: _Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REPEAT:
        return c.error(line, f"'repeat' must be a whole number from 1 to {MAX_REPEAT}, got {value!r}")
    return value


def _check_threshold(c: _Checker, value: Any, line: int | None) -> Any:
    if not is_number(value) or not 0 <= value <= 1:
        return c.error(line, f"'threshold' must be a number from 0 to 1, got {value!r}")
    return float(value)


def _check_messages(c: _Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, list):
        return c.error(line, f"'messages' must be a list of {{role, content}}, got {value!r}")
    before = len(c.problems)
    for i, message in enumerate(value):
        at = c.lines.of(value, i) or line
        if not isinstance(message, dict):
            c.error(at, f"messages[{i}] must be a mapping with role and content, got {message!r}")
            continue
        c.unknown_keys(message, MESSAGE_KEYS, f"messages[{i}]")
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            roles = ", ".join(MESSAGE_ROLES)
            c.error(at, f"messages[{i}].role must be one of {roles}, got {role!r}")
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            c.error(at, f"messages[{i}] needs 'content'")
        elif content is not None and not isinstance(content, str | list):
            c.error(at, f"messages[{i}].content must be a string or a list, got {content!r}")
        if problem := json_problem(message, f"messages[{i}]"):
            c.error(at, problem)
    return _INVALID if len(c.problems) > before else value


# --- assertions ----------------------------------------------------------------------------


def _read_assertion(c: _Checker, data: Any, line: int | None, where: str) -> Assertion | _Invalid:
    if not isinstance(data, dict):
        return c.error(line, f"{where} must be a mapping with a 'type', got {data!r}")
    line = c.lines.of(data) or line
    assertion, problems = read_assertion(data, line)
    for key, message in problems:
        c.error(c.lines.of(data, key) if key is not None else line, message)
    return assertion or _INVALID


def _read_assertions(c: _Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, list):
        return c.error(line, f"'assert' must be a list of assertions, got {type_name(value)}")
    read = [
        _read_assertion(c, item, c.lines.of(value, i) or line, f"assert[{i}]")
        for i, item in enumerate(value)
    ]
    return _INVALID if any(a is _INVALID for a in read) else read


# --- cases and files -----------------------------------------------------------------------


_FIELD_CHECKS: dict[str, Callable[[_Checker, Any, int | None], Any]] = {
    "name": _check_name,
    "description": partial(_check_text, what="'description'"),
    "vars": partial(_check_variables, what="vars"),
    "user_vars": partial(_check_variables, what="user_vars"),
    "messages": _check_messages,
    "input": partial(_check_text, what="'input'"),
    "model": _check_model,
    "repeat": _check_repeat,
    "threshold": _check_threshold,
    "assert": _read_assertions,
}


def _read_fields(c: _Checker, data: dict[Any, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The validated values of `keys` present in `data` (_INVALID where a check failed)."""
    return {
        key: _FIELD_CHECKS[key](c, data[key], c.lines.of(data, key)) for key in keys if key in data
    }


def _read_case(
    c: _Checker,
    data: dict[Any, Any],
    prompt_key: str | None,
    defaults: dict[str, Any],
    allowed: tuple[str, ...],
) -> EvalCase | None:
    line = c.lines.of(data, "name")
    before = len(c.problems)
    c.unknown_keys(data, allowed, "an eval case")
    if "name" not in data:
        c.error(c.lines.of(data), "an eval case needs a 'name'")
    if "messages" in data and "input" in data:
        c.error(c.lines.of(data, "input"), "give either 'messages' or 'input', not both")
    own = _read_fields(c, data, CASE_KEYS)
    if len(c.problems) > before or prompt_key is None:
        return None
    if any(value is _INVALID for value in defaults.values()):
        return None
    messages = own.get("messages", [])
    if "input" in own:
        messages = [{"role": "user", "content": own["input"]}]
    case = EvalCase(
        prompt_key=prompt_key,
        name=own["name"],
        file=c.path,
        line=line,
        vars={**defaults.get("vars", {}), **own.get("vars", {})},
        user_vars={**defaults.get("user_vars", {}), **own.get("user_vars", {})},
        messages=messages,
        model=own.get("model", defaults.get("model")),
        repeat=own.get("repeat", defaults.get("repeat", 1)),
        threshold=own.get("threshold", defaults.get("threshold", 1.0)),
        assertions=[*own.get("assert", []), *defaults.get("assert", [])],
        description=own.get("description"),
    )
    if not case.assertions:
        c.warn(line, f"case {case.name!r} has no assertions: it only checks that the prompt runs")
    return case


def _file_prompt_key(c: _Checker, data: dict[Any, Any]) -> str | None:
    if "prompt" in data:
        key = data["prompt"]
        if problem := prompt_key_problem(key):
            c.error(c.lines.of(data, "prompt"), f"'prompt': {problem}")
            return None
        return str(key)
    key = prompt_key_from_path(c.path)
    if key is None:
        c.error(None, "cannot tell which prompt these cases test: put the file in "
                "evals/<prompt key>/ or set 'prompt:'")
        return None
    if problem := prompt_key_problem(key):
        c.error(None, f"the folder does not give a prompt key ({problem}); set 'prompt:'")
        return None
    return key


def _read_document(c: _Checker, data: Any) -> tuple[str | None, list[EvalCase]]:
    if data is None:
        c.warn(None, "the file holds no cases")
        return None, []
    if not isinstance(data, dict):
        hint = " (put the cases under a top-level 'cases:' key)" if isinstance(data, list) else ""
        message = f"an eval file must be a mapping, got {type_name(data)}{hint}"
        c.error(c.lines.of(data), message)
        return None, []
    prompt_key = _file_prompt_key(c, data)
    if "cases" not in data:
        if "name" not in data:
            c.error(c.lines.of(data), "an eval file needs a 'name' (one case) or a 'cases' list")
            return prompt_key, []
        case = _read_case(c, data, prompt_key, {}, SINGLE_FILE_KEYS)
        return prompt_key, [case] if case else []
    c.unknown_keys(data, MULTI_FILE_KEYS, "an eval file with 'cases'")
    defaults = _read_fields(c, data, FILE_DEFAULT_KEYS)
    entries = data["cases"]
    if not isinstance(entries, list):
        c.error(c.lines.of(data, "cases"), f"'cases' must be a list, got {type_name(entries)}")
        return prompt_key, []
    cases = []
    first_lines: dict[str, int | None] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            c.error(c.lines.of(entries, i), f"cases[{i}] must be a mapping, got {entry!r}")
            continue
        name, line = entry.get("name"), c.lines.of(entry, "name")
        if isinstance(name, str) and name in first_lines:
            c.error(line, f"duplicate case name {name!r} (first at line {first_lines[name]})")
        elif isinstance(name, str):
            first_lines[name] = line
        if case := _read_case(c, entry, prompt_key, defaults, CASE_KEYS):
            cases.append(case)
    return prompt_key, cases


def _duplicate_case_problems(cases: list[EvalCase]) -> list[Problem]:
    first: dict[tuple[str, str], EvalCase] = {}
    problems = []
    for case in cases:
        earlier = first.setdefault((case.prompt_key, case.name), case)
        if earlier is not case:
            where = f"{earlier.file}:{earlier.line}" if earlier.line else earlier.file
            message = f"duplicate case name {case.name!r} for prompt {case.prompt_key!r}"
            problems.append(Problem(case.file, case.line, f"{message} (first at {where})"))
    return problems


def read_eval_text(text: str, rel_path: str) -> EvalFile:
    """Parse and check one eval file; never raises: problems are returned in the EvalFile."""
    try:
        loaded = load(text)
    except YamlProblem as problem:
        return EvalFile(rel_path, None, [], [Problem(rel_path, problem.line, problem.message)])
    data, lines, duplicates = loaded.data, loaded.lines, loaded.duplicates
    c = _Checker(rel_path, lines)
    for line, key in duplicates:
        c.error(line, f"duplicate key {key!r}")
    prompt_key, cases = _read_document(c, data)
    c.problems.sort(key=lambda p: p.line or 0)
    if any(p.severity == "error" for p in c.problems):
        cases = []
    return EvalFile(rel_path, prompt_key, cases, c.problems)


def _raise_errors(eval_file: EvalFile) -> EvalFile:
    if eval_file.errors:
        raise EvalSpecError(eval_file.errors)
    return eval_file


def load_eval_text(text: str, rel_path: str) -> EvalFile:
    """Parse one eval file; raises EvalSpecError (with every error) if it has any."""
    return _raise_errors(read_eval_text(text, rel_path))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def read_eval_file(path: Path, root: Path) -> EvalFile:
    rel_path = _relative(path, root)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = Problem(rel_path, 1, f"cannot read the file: {exc.strerror}")
        return EvalFile(rel_path, None, [], [problem])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        message = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded; save as UTF-8"
        return EvalFile(rel_path, None, [], [Problem(rel_path, line, message)])
    return read_eval_text(text, rel_path)


def load_eval_file(path: Path, root: Path) -> EvalFile:
    """Parse one eval file of the repository at `root`; raises EvalSpecError on any error."""
    return _raise_errors(read_eval_file(path, root))


def eval_file_paths(root: Path) -> list[Path]:
    """Every eval file below `root/evals`, in a stable order. Hidden entries are skipped and
    symbolic links are never followed (`llmkit lint` reports them)."""
    return sorted(
        Path(entry.path)
        for entry in scan_tree(root / EVALS_DIR)
        if entry.name.endswith(EVAL_SUFFIXES) and entry.is_file(follow_symlinks=False)
    )


def load_evals(root: Path) -> tuple[list[EvalCase], list[Problem]]:
    """Every valid case of the repository at `root` and every problem found (one bad file
    never hides the others). Cases are only usable when no problem is an error."""
    cases: list[EvalCase] = []
    problems: list[Problem] = []
    for path in eval_file_paths(root):
        eval_file = read_eval_file(path, root)
        problems.extend(eval_file.problems)
        cases.extend(eval_file.cases)
        key = eval_file.prompt_key
        if key and not (root / PROMPTS_DIR / f"{key}.md").is_file():
            message = f"no prompt {key!r} ({PROMPTS_DIR}/{key}.md does not exist)"
            problems.append(Problem(eval_file.path, 1, message))
    problems.extend(_duplicate_case_problems(cases))
    return cases, problems


def lint_evals(root: Path) -> list[Problem]:
    return load_evals(root)[1]


# --- writing cases -------------------------------------------------------------------------


def _single_user_text(messages: list[dict[str, Any]]) -> str | None:
    if len(messages) != 1 or messages[0].keys() != {"role", "content"}:
        return None
    role, content = messages[0]["role"], messages[0]["content"]
    return content if role == "user" and isinstance(content, str) else None


def case_to_yaml_dict(case: EvalCase) -> dict[str, Any]:
    """The keys of a case's own file, in canonical order, defaults left out."""
    data: dict[str, Any] = {}
    if prompt_key_from_path(case.file) != case.prompt_key:
        data["prompt"] = case.prompt_key
    data["name"] = case.name
    optional = {
        "description": (case.description, None),
        "model": (case.model, None),
        "repeat": (case.repeat, 1),
        "threshold": (case.threshold, 1.0),
        "vars": (case.vars, {}),
        "user_vars": (case.user_vars, {}),
    }
    data.update({key: value for key, (value, default) in optional.items() if value != default})
    user_text = _single_user_text(case.messages)
    if user_text is not None:
        data["input"] = user_text
    elif case.messages:
        data["messages"] = case.messages
    data["assert"] = [assertion_to_dict(a) for a in case.assertions]
    return data


class _CaseDumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line text (prompts, rubrics, expected outputs) reads best as a literal block; the
    # emitter falls back to quoting where a block cannot hold the text exactly. PyYAML's other
    # styles turn NEL (U+0085) into a line break, so only escaping keeps it.
    if "\x85" in value:
        style: str | None = '"'
    else:
        style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CaseDumper.add_representer(str, _represent_str)


def to_yaml(data: Any) -> str:
    return yaml.dump(
        data, Dumper=_CaseDumper, sort_keys=False, allow_unicode=True,
        default_flow_style=False, width=4096,
    )


def serialize_case(case: EvalCase) -> str:
    """The canonical text of `case` in a file of its own (at `case.file`)."""
    return to_yaml(case_to_yaml_dict(case))


# --- the HTTP API's JSON -------------------------------------------------------------------


def case_to_dict(case: EvalCase, id: int | str | None = None) -> dict[str, Any]:
    """LLMKit-style JSON for a case; `system_prompt_input`/`user_prompt_input` are LLMKit's
    fields, kept so its clients keep working."""
    data: dict[str, Any] = {} if id is None else {"id": id}
    user_text = _single_user_text(case.messages)
    data.update({
        "prompt_key": case.prompt_key,
        "name": case.name,
        "description": case.description,
        "file": case.file,
        "line": case.line,
        "vars": case.vars,
        "user_vars": case.user_vars,
        "messages": case.messages,
        "model": case.model,
        "repeat": case.repeat,
        "threshold": case.threshold,
        "assert": [assertion_to_dict(a) for a in case.assertions],
        "system_prompt_input": json.dumps(case.vars) if case.vars else None,
        "user_prompt_input": json.dumps(case.user_vars) if case.user_vars else (user_text or ""),
    })
    return data


def _from_llmkit_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Our case fields from LLMKit's, where ours are absent: system_prompt_input is a JSON
    object of system variables; user_prompt_input is a JSON object of user variables or the
    user message itself."""
    llmkit_keys = ("system_prompt_input", "user_prompt_input")
    fields = {k: v for k, v in data.items() if k not in llmkit_keys}
    system_input = data.get("system_prompt_input")
    if system_input not in (None, "") and "vars" not in data:
        fields["vars"] = _json_object_or_self(system_input)
    user_input = data.get("user_prompt_input")
    if user_input not in (None, "") and not {"user_vars", "messages", "input"} & data.keys():
        parsed = _json_object_or_self(user_input)
        fields["user_vars" if isinstance(parsed, dict) else "input"] = parsed
    return fields


def _json_object_or_self(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, dict) else value
    return value


def case_from_dict(
    data: dict[str, Any], prompt_key: str | None = None, file: str | None = None
) -> EvalCase:
    """A case from API JSON (ours or LLMKit's fields). `prompt_key` wins over the body's;
    `file` defaults to case_path(). Raises EvalSpecError naming every bad field."""
    c = _Checker(file or "", Lines(), default_line=None)
    if not isinstance(data, dict):
        message = f"an eval case must be a JSON object, got {type_name(data)}"
        raise EvalSpecError([Problem("", None, message)])
    fields = {k: v for k, v in _from_llmkit_fields(data).items() if k not in _IGNORED_API_KEYS}
    body_key = fields.pop("prompt_key", None)
    given = prompt_key or body_key
    problem = prompt_key_problem(given)
    key = None if problem else str(given)
    if problem:
        c.error(None, f"'prompt_key': {problem}")
    c.unknown_keys(fields, CASE_KEYS, "an eval case")
    fields = {k: v for k, v in fields.items() if k in CASE_KEYS and v is not None}
    for name, value in fields.items():
        if surrogate_in(value) is not None:
            # An eval file is UTF-8 text: a lone surrogate can neither be written nor read back.
            c.error(None, f"'{name}' holds a lone surrogate, which is not a character and cannot"
                    " be stored as UTF-8")
    if file is None and key is not None and isinstance(fields.get("name"), str):
        c.path = case_path(key, fields["name"])
    case = _read_case(c, fields, key, {}, CASE_KEYS)
    errors = [p for p in c.problems if p.severity == "error"]
    if errors or case is None:
        raise EvalSpecError(errors or [Problem(c.path, None, "invalid eval case")])
    return case

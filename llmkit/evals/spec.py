"""Eval files: the cases under `evals/<prompt key>/*.yaml`, read and checked.

A file holds one case (a mapping with `name`) or several (a `cases:` list) plus file-level
defaults (`prompt`, `vars`, `user_vars`, `assert`, `threshold`, `model`, `repeat`). A case's
`vars` and `user_vars` are merged over the file's, its assertions come before the file's, and
its `threshold`, `model` and `repeat` override the file's.

`threshold` is the fraction of (weighted) assertions that must pass for one run to pass, and
the fraction of runs that must pass when a case is repeated.

A case with no assertions is a warning, not an error: it still checks that the prompt renders
and the provider answers without an error, which makes a useful smoke test.

Assertions (their types, keys and checks) live in `asserts`; the case model in `cases`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from llmkit.config import PROMPTS_DIR
from llmkit.evals.asserts import (
    Assertion,
    is_number,
    json_problem,
    read_assertion,
    type_name,
    unknown_key_message,
)
from llmkit.evals.cases import (
    CASE_KEYS,
    EVAL_SUFFIXES,
    EVALS_DIR,
    FILE_DEFAULT_KEYS,
    MESSAGE_KEYS,
    MESSAGE_ROLES,
    MULTI_FILE_KEYS,
    SINGLE_FILE_KEYS,
    EvalCase,
    EvalFile,
    EvalSpecError,
    Problem,
    prompt_key_from_path,
    prompt_key_problem,
)
from llmkit.store import scan_tree
from llmkit.yamlfile import Lines, YamlProblem, load

# --- validation ----------------------------------------------------------------------------


class _Invalid:
    """Marks a value that failed validation (its problem is already recorded)."""


_INVALID = _Invalid()


class Checker:
    """Collects the problems of one file (or API body) with their lines, so that every bad
    field is reported, not only the first."""

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


def _check_text(c: Checker, value: Any, line: int | None, what: str) -> Any:
    if not isinstance(value, str):
        return c.error(line, f"{what} must be a string, got {type_name(value)} {value!r}")
    return value


def _check_name(c: Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, str) or not value.strip():
        return c.error(line, f"'name' must be a non-empty string, got {value!r}")
    if "\n" in value or "\r" in value:
        return c.error(line, f"'name' must be one line, got {value!r}")
    return value


def _check_model(c: Checker, value: Any, line: int | None, what: str = "'model'") -> Any:
    if not isinstance(value, str) or not value.strip():
        return c.error(line, f"{what} must be a non-empty model name, got {value!r}")
    return value


def _check_variables(c: Checker, value: Any, line: int | None, what: str) -> Any:
    if not isinstance(value, dict):
        return c.error(line, f"'{what}' must be a mapping of names to values, got {value!r}")
    if problem := json_problem(value, what):
        return c.error(line, problem)
    return value


MAX_REPEAT = 100


def _check_repeat(c: Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REPEAT:
        message = f"'repeat' must be a whole number from 1 to {MAX_REPEAT}, got {value!r}"
        return c.error(line, message)
    return value


def _check_threshold(c: Checker, value: Any, line: int | None) -> Any:
    if not is_number(value) or not 0 <= value <= 1:
        return c.error(line, f"'threshold' must be a number from 0 to 1, got {value!r}")
    return float(value)


def _check_messages(c: Checker, value: Any, line: int | None) -> Any:
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


def _read_assertion(c: Checker, data: Any, line: int | None, where: str) -> Assertion | _Invalid:
    if not isinstance(data, dict):
        return c.error(line, f"{where} must be a mapping with a 'type', got {data!r}")
    line = c.lines.of(data) or line
    assertion, problems = read_assertion(data, line)
    for key, message in problems:
        c.error(c.lines.of(data, key) if key is not None else line, message)
    return assertion or _INVALID


def _read_assertions(c: Checker, value: Any, line: int | None) -> Any:
    if not isinstance(value, list):
        return c.error(line, f"'assert' must be a list of assertions, got {type_name(value)}")
    read = [
        _read_assertion(c, item, c.lines.of(value, i) or line, f"assert[{i}]")
        for i, item in enumerate(value)
    ]
    return _INVALID if any(a is _INVALID for a in read) else read


# --- cases and files -----------------------------------------------------------------------


_FIELD_CHECKS: dict[str, Callable[[Checker, Any, int | None], Any]] = {
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


def _read_fields(c: Checker, data: dict[Any, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The validated values of `keys` present in `data` (_INVALID where a check failed)."""
    return {
        key: _FIELD_CHECKS[key](c, data[key], c.lines.of(data, key)) for key in keys if key in data
    }


def read_case(
    c: Checker,
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


def _file_prompt_key(c: Checker, data: dict[Any, Any]) -> str | None:
    if "prompt" in data:
        key = data["prompt"]
        if problem := prompt_key_problem(key):
            c.error(c.lines.of(data, "prompt"), f"'prompt': {problem}")
            return None
        return str(key)
    key = prompt_key_from_path(c.path)
    if key is None:
        c.error(
            None,
            "cannot tell which prompt these cases test: put the file in "
            "evals/<prompt key>/ or set 'prompt:'",
        )
        return None
    if problem := prompt_key_problem(key):
        c.error(None, f"the folder does not give a prompt key ({problem}); set 'prompt:'")
        return None
    return key


def _read_document(c: Checker, data: Any) -> tuple[str | None, list[EvalCase]]:
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
        case = read_case(c, data, prompt_key, {}, SINGLE_FILE_KEYS)
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
        if case := read_case(c, entry, prompt_key, defaults, CASE_KEYS):
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
    c = Checker(rel_path, lines)
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

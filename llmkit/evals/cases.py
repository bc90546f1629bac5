"""Eval cases: what a case is, where its file lives, and the problems found reading one.

Cases are read and checked in `spec`, written as YAML in `case_yaml`, and mapped to and from
the HTTP API's JSON in `case_json`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from llmkit.config import EVALS_DIR
from llmkit.errors import InvalidKey, PromptFormatError
from llmkit.evals.asserts import Assertion
from llmkit.promptfile import validate_key

EVAL_SUFFIXES = (".yaml", ".yml")

CASE_KEYS = (
    "name",
    "description",
    "vars",
    "user_vars",
    "messages",
    "input",
    "model",
    "repeat",
    "threshold",
    "assert",
)
FILE_DEFAULT_KEYS = ("vars", "user_vars", "assert", "threshold", "model", "repeat")
MULTI_FILE_KEYS = ("prompt", "cases", *FILE_DEFAULT_KEYS)
SINGLE_FILE_KEYS = ("prompt", *CASE_KEYS)

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def case_id(prompt_key: str, file: str, name: str | None) -> int:
    """A case's integer id (LLMKit's `prompt_eval_id`), the same after any index rebuild. A
    case alone in its file (every case the API makes) is named by its file, so it keeps its id
    when renamed, as a row would; one of several in a file also by its name (`name`)."""
    digest = hashlib.sha256(f"{prompt_key}\0{file}\0{name or ''}".encode()).hexdigest()
    return int(digest[:12], 16)


def identified(cases: list[EvalCase]) -> list[tuple[int, EvalCase]]:
    """Each case with its id (see case_id)."""
    per_file = Counter(case.file for case in cases)
    return [
        (case_id(case.prompt_key, case.file, None if per_file[case.file] == 1 else case.name), case)
        for case in cases
    ]


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

    @property
    def user_text(self) -> str | None:
        """The text of the case's one user message, when that is all its messages hold (it is
        written as `input:` then)."""
        if len(self.messages) != 1 or self.messages[0].keys() != {"role", "content"}:
            return None
        role, content = self.messages[0]["role"], self.messages[0]["content"]
        return content if role == "user" and isinstance(content, str) else None


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

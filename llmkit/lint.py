"""Lint: every problem in the working tree's prompt and eval files, as `path:line: message`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmkit.budgets import DEFAULT_LIMITS
from llmkit.config import PROMPTS_DIR
from llmkit.errors import InvalidKey
from llmkit.promptfile import (
    PROMPT_SUFFIX,
    case_collisions,
    diagnose,
    key_from_path,
    path_for_key,
)
from llmkit.render import check_templates
from llmkit.store import GitStore


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"

    def github(self) -> str:
        """A GitHub Actions workflow command, shown as an annotation on the pull request."""
        message = self.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        # Property values also escape the separators of the command itself.
        path = self.path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        path = path.replace(":", "%3A").replace(",", "%2C")
        return f"::{self.severity} file={path},line={self.line}::{message}"


# Keys that are words of the execution routes: POST /v1/ui/prompts/execute/stream (and /chat,
# /chat/stream) execute the prompt named in the body, so a prompt with such a key is reached
# there only by its integer id.
RESERVED_KEYS = ("stream", "chat", "chat/stream")


def lint_prompt_text(
    rel_path: str, data: bytes, max_bytes: int = DEFAULT_LIMITS.prompt_file_bytes
) -> list[Problem]:
    """Every problem of one prompt file, in line order: its name, its size, its encoding, its
    frontmatter (each key), its role markers and the template of each section."""
    problems = []
    try:
        key = key_from_path(rel_path)
    except InvalidKey as exc:
        problems.append(Problem(rel_path, 1, exc.message))
    else:
        if key in RESERVED_KEYS:
            message = (
                f"Prompt key {key!r} is reserved: POST /v1/ui/prompts/execute/{key} executes the"
                " prompt named in the body, so this one runs there only by its id; rename it"
            )
            problems.append(Problem(rel_path, 1, message, "warning"))
    if len(data) > max_bytes:
        message = (
            f"File is {len(data):,} bytes, over the limit of {max_bytes:,} for a prompt file"
            " (limits.prompt_file_bytes in llmkit.yaml); it is not served"
        )
        return problems + [Problem(rel_path, 1, message)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(
            Problem(rel_path, line, f"File is not UTF-8 text (invalid byte at offset {exc.start})")
        )
        # The rest of the file is still checked, with the bad bytes replaced.
        text = data.decode("utf-8", errors="replace")
    prompt, found = diagnose(text, rel_path)
    problems.extend(Problem(rel_path, exc.line or 1, exc.detail) for exc in found)
    for line, message in check_templates(prompt):
        problems.append(Problem(rel_path, line, message))
    if not prompt.messages and not found:
        problems.append(Problem(rel_path, 1, "Prompt has no messages", "warning"))
    return sorted(problems, key=lambda problem: problem.line)


def lint_repo(root: Path) -> list[Problem]:
    """Problems of every prompt file and eval file; one bad file never hides the others."""
    from llmkit.models import ModelRegistry

    max_bytes = ModelRegistry(root / "llmkit.yaml").limits().prompt_file_bytes
    with GitStore(root) as store:
        links, files = store.symlinks(), store.working_files(PROMPTS_DIR, (PROMPT_SUFFIX,))
    problems = [
        Problem(
            link,
            1,
            "Symbolic link: llmkit never follows links inside prompts/ and evals/;"
            " put the file itself there",
        )
        for link in links
    ]
    for rel, path in sorted(files.items()):
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(rel, 1, f"Cannot read file: {exc.strerror}"))
            continue
        problems.extend(lint_prompt_text(rel, data, max_bytes))
    problems.extend(_case_collisions(files))
    problems.extend(_lint_evals(root))
    problems.extend(_lint_config(root))
    return problems


def _case_collisions(files: dict[str, Path]) -> list[Problem]:
    """Prompt keys (or their folders) that differ only in case: on macOS and Windows they are
    one file, and the repository cannot be checked out."""
    keys = []
    for rel in files:
        try:
            keys.append(key_from_path(rel))
        except InvalidKey:
            continue
    return [
        Problem(
            path_for_key(key),
            1,
            f"Prompt key {key!r} differs only in case from {other!r}; on macOS and Windows"
            " both are one file, so the repository cannot be checked out there",
        )
        for key, other in case_collisions(keys)
    ]


def _lint_config(root: Path) -> list[Problem]:
    from llmkit.errors import ConfigError
    from llmkit.models import ModelRegistry

    try:
        ModelRegistry(root / "llmkit.yaml").aliases()
    except ConfigError as exc:
        match = re.match(r"llmkit\.yaml(?::(\d+))?: (.*)", exc.message, re.DOTALL)
        line, message = (int(match.group(1) or 1), match.group(2)) if match else (1, exc.message)
        return [Problem("llmkit.yaml", line, message)]
    return []


def _lint_evals(root: Path) -> list[Problem]:
    from llmkit.evals.spec import lint_evals

    return [Problem(p.path, p.line or 1, p.message, p.severity) for p in lint_evals(root)]

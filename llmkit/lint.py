"""Lint: every problem in the working tree's prompt and eval files, as `path:line: message`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import InvalidKey, PromptFormatError
from llmkit.promptfile import key_from_path, parse
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


def lint_prompt_text(rel_path: str, data: bytes) -> list[Problem]:
    problems = []
    try:
        key_from_path(rel_path)
    except InvalidKey as exc:
        problems.append(Problem(rel_path, 1, exc.message))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return problems + [Problem(rel_path, line, f"File is not UTF-8 text (invalid byte at offset {exc.start})")]
    try:
        prompt = parse(text, rel_path)
    except PromptFormatError as exc:
        return problems + [Problem(rel_path, exc.line or 1, exc.detail)]
    for line, message in check_templates(prompt):
        problems.append(Problem(rel_path, line, message))
    if not prompt.messages:
        problems.append(Problem(rel_path, 1, "Prompt has no messages", "warning"))
    return problems


def lint_repo(root: Path) -> list[Problem]:
    """Problems of every prompt file and eval file; one bad file never hides the others."""
    store = GitStore(root)
    problems = [
        Problem(link, 1, "Symbolic link: llmkit never follows links inside prompts/ and evals/;"
                " put the file itself there")
        for link in store.symlinks()
    ]
    for rel, path in sorted(store.working_files("prompts", (".md",)).items()):
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(rel, 1, f"Cannot read file: {exc.strerror}"))
            continue
        problems.extend(lint_prompt_text(rel, data))
    problems.extend(_lint_evals(root))
    problems.extend(_lint_config(root))
    return problems


def _lint_config(root: Path) -> list[Problem]:
    from llmkit.errors import ConfigError
    from llmkit.models import ModelRegistry

    try:
        ModelRegistry(root / "llmkit.yaml").aliases()
    except ConfigError as exc:
        match = re.match(r"llmkit\.yaml(?::(\d+))?: (.*)", exc.message, re.S)
        line, message = (int(match.group(1) or 1), match.group(2)) if match else (1, exc.message)
        return [Problem("llmkit.yaml", line, message)]
    return []


def _lint_evals(root: Path) -> list[Problem]:
    from llmkit.evals.spec import lint_evals

    return [Problem(p.path, p.line or 1, p.message, p.severity) for p in lint_evals(root)]

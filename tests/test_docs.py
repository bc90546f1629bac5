"""The README's Contributing section stays true: the files it sends a contributor to exist, and
it names every module that holds CLI commands."""

from __future__ import annotations

import re
from pathlib import Path

from llmkit.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def contributing() -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    found = re.search(r"^## Contributing\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert found, "the README has a Contributing section"
    return found.group(1)


def test_the_files_it_names_exist() -> None:
    named = re.findall(r"`((?:llmkit/|tests/|bench/|providers/)[\w/.]*)`", contributing())
    assert len(named) >= 10
    missing = [
        path
        for path in named
        if not (ROOT / path).exists() and not (ROOT / "llmkit" / path).exists()
    ]
    assert missing == []


def test_it_names_every_module_that_holds_commands() -> None:
    text = contributing()
    named = set(re.findall(r"`(cli_\w+)`", text))
    holding = {
        command.callback.__module__.rpartition(".")[2]
        for command in COMMANDS
        if command.callback is not None
    }
    assert holding <= named, f"not in the README's Contributing section: {holding - named}"
    assert all((ROOT / "llmkit" / f"{module}.py").exists() for module in named)
    assert set(main.commands.values()) == set(COMMANDS)

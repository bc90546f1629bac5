"""What the command line says: every lint problem of a file at once, one location format for a
template error everywhere, JSON variables and dotted missing names, headers and empty results,
the first admin key, trace ids by prefix, and how fast `llmkit serve` stops."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from llmkit.cli import main
from llmkit.lint import lint_prompt_text
from tests.conftest import MakeRepo, Repo


def run(*args: str | Path, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


# -- lint: every problem of a file in one run ----------------------------------------------------

MANY_PROBLEMS = """\
---
model: echo
temprature: 0.5
max_tokens: -1
colour: red
type: weird
---
<!-- role:system -->
Hello {{ name }}
<!-- role:robot -->
hi
<!-- role:user -->
{% if y %}
"""


def test_lint_reports_every_problem_of_one_file_in_one_run(make_repo: MakeRepo) -> None:
    repo = make_repo("many", {"prompts/many.md": MANY_PROBLEMS})
    result = run("lint", "--repo", repo.root)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    expected = [
        ("prompts/many.md:3: ", "Unknown frontmatter key 'temprature'; did you mean 'temperature'?"),
        ("prompts/many.md:4: ", "max_tokens must be at least 1, got -1"),
        ("prompts/many.md:5: ", "Unknown frontmatter key 'colour' (known keys: model,"),
        ("prompts/many.md:6: ", "type must be one of static, dynamic_system, dynamic_both"),
        ("prompts/many.md:10: ", "Unknown role marker 'robot'"),
        ("prompts/many.md:13: ", "Template syntax error: Unexpected end of template"),
    ]
    assert len(lines) == len(expected), lines
    for line, (where, message) in zip(lines, expected):
        assert line.startswith(where + message), line
    assert "6 error(s), 0 warning(s)" in result.stderr


def test_lint_checks_the_body_even_when_the_frontmatter_cannot_be_read() -> None:
    text = b"---\nmodel: m\n  nested: wrong\n---\ncaf\xe9\n<!-- role:user -->\n{% if q %}\n"
    problems = lint_prompt_text("prompts/a.md", text)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (3, "Malformed frontmatter"),
        (5, "File is not UTF-8 text (invalid byte at offset 36)"),
        (7, "Template syntax error"),
    ]


def test_a_misspelt_key_is_still_refused_when_served(repo: Repo) -> None:
    """parse() keeps refusing the file, with the first problem and its suggestion."""
    from llmkit.errors import PromptFormatError
    from llmkit.promptfile import parse

    try:
        parse("---\nmax_token: 5\n---\nhi\n", "prompts/a.md")
    except PromptFormatError as exc:
        assert exc.message.startswith(
            "prompts/a.md:2: Unknown frontmatter key 'max_token'; did you mean 'max_tokens'?"
        )
    else:
        raise AssertionError("a misspelt key was accepted")

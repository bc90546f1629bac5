"""yamlfile: the one way YAML is read, with lines for keys, items and problems."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from llmkit.errors import ConfigError, PromptFormatError
from llmkit.evals.spec import read_eval_text
from llmkit.models import ModelRegistry
from llmkit.promptfile import parse
from llmkit.yamlfile import YamlProblem, load, refusal


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_refusals_name_the_line_and_ordinary_yaml_passes() -> None:
    assert refusal("a: 1\nb: [1, {c: 2}]\nd: 'x & y * z'\n") is None
    assert refusal("a: [\n") is None  # a syntax error is left to the loader
    anchored = refusal("a: 1\nb: &x 2\nc: *x\n")
    assert anchored is not None and anchored[0] == 2 and "anchor &x" in anchored[1]
    line, message = refusal("a: 1\nb:\n  - c\n  - *x\n")  # type: ignore[misc]
    assert (line, message.split(" is not")[0]) == (4, "YAML alias *x")
    line, message = refusal("x: " + nested(70), 64)  # type: ignore[misc]
    assert (line, message) == (1, "YAML nests deeper than 64 levels")


def test_keys_and_items_keep_their_lines_counted_from_the_first_line() -> None:
    text = "# comment\nname: x\nvars:\n  a: 1\nlist:\n  - one\n  - {b: 2}\n"
    for first_line in (1, 2):
        loaded = load(text, first_line=first_line)
        shift = first_line - 1
        data, lines = loaded.data, loaded.lines
        assert lines.of(data, "name") == 2 + shift
        assert lines.of(data["vars"], "a") == 4 + shift
        assert [lines.of(data["list"], i) for i in range(2)] == [6 + shift, 7 + shift]
        assert lines.of(data["list"][1]) == 7 + shift
        # A key the mapping does not hold falls back to where the mapping starts.
        assert lines.of(data["vars"], "missing") == 4 + shift


def test_duplicate_keys_are_reported_with_their_lines() -> None:
    loaded = load("a: 1\nb: 2\na: 3\n")
    assert loaded.data == {"a": 3, "b": 2}
    assert loaded.duplicates == [(3, "a")]


def test_dates_stay_text_unless_asked_for() -> None:
    assert load("d: 2024-01-01\n").data == {"d": "2024-01-01"}
    assert load("d: 2024-01-01\n", dates=True).data == {"d": datetime.date(2024, 1, 1)}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\n  b: 2\n", 2, "YAML syntax error: mapping values are not allowed"),
        ("a: [1, 2\n", 2, "YAML syntax error: did not find expected ',' or ']'"),
        # The reader's position of a bad character counts bytes in libyaml; the line does not.
        ("a: é\nb: ü\nc: \x07\n", 3, "YAML syntax error: unacceptable character #x0007"),
        ("a: 1\nb: &x [1]\n", 2, "YAML anchor &x is not allowed"),
        ("a:\n  b: " + nested(100_000) + "\n", 2, "YAML nests deeper than 64 levels"),
    ],
)
def test_every_problem_has_a_line_and_reads_the_same(text: str, line: int, message: str) -> None:
    for first_line in (1, 5):
        with pytest.raises(YamlProblem) as raised:
            load(text, first_line=first_line)
        assert raised.value.line == line + first_line - 1
        assert raised.value.message.startswith(message)
        assert "\n" not in raised.value.message
        located = raised.value.located("evals/x.yaml")
        assert located == f"evals/x.yaml:{line + first_line - 1}: {raised.value.message}"


# --- the three readers: eval files, prompt frontmatter, llmkit.yaml ----------------------------

BROKEN = "a: 1\n  b: 2\n"  # the problem is on the YAML's line 2


def test_a_frontmatter_key_is_found_at_its_own_line_not_at_text_that_looks_like_it() -> None:
    text = (
        "---\n"
        "description: |\n"
        "  temperature: mentioned in the description\n"
        "model: echo\n"
        "temperature: hot\n"
        "---\n"
        "Hello\n"
    )
    with pytest.raises(PromptFormatError) as raised:
        parse(text, "prompts/x.md")
    assert raised.value.line == 5
    assert str(raised.value).startswith("prompts/x.md:5: ")
    assert "temperature" in raised.value.detail


def test_frontmatter_dates_load_as_dates_as_before() -> None:
    meta = parse("---\nmodel: echo\ndescription: x\n---\nHi\n").meta
    assert meta == {"model": "echo", "description": "x"}
    with pytest.raises(PromptFormatError) as raised:
        parse("---\nmodel: echo\ndescription: 2024-01-01\n---\nHi\n", "prompts/d.md")
    assert raised.value.line == 3


def test_a_syntax_error_reads_the_same_and_has_its_line_in_all_three_files(
    tmp_path: Path,
) -> None:
    with pytest.raises(YamlProblem) as raised:
        load(BROKEN)
    message = raised.value.message

    eval_file = read_eval_text(BROKEN, "evals/greet/a.yaml")
    assert [(p.line, p.message) for p in eval_file.problems] == [(2, message)]

    with pytest.raises(PromptFormatError) as in_prompt:
        parse("---\n" + BROKEN + "---\nHi\n", "prompts/p.md")
    # The frontmatter starts on the file's line 2.
    assert (in_prompt.value.line, in_prompt.value.detail) == (
        3,
        f"Malformed frontmatter: {message}",
    )

    config = tmp_path / "llmkit.yaml"
    config.write_text(BROKEN, "utf-8")
    with pytest.raises(ConfigError) as in_config:
        ModelRegistry(config).aliases()
    assert in_config.value.message == f"llmkit.yaml:2: {message}"


def test_an_alias_is_refused_at_its_line_in_all_three_files(tmp_path: Path) -> None:
    text = "models:\n  default: &d echo\n  fast: *d\n"
    assert read_eval_text(text, "evals/greet/a.yaml").problems[0].line == 2
    with pytest.raises(PromptFormatError) as in_prompt:
        parse("---\n" + text + "---\nHi\n", "prompts/p.md")
    assert in_prompt.value.line == 3
    assert in_prompt.value.detail.startswith("Frontmatter: YAML anchor &d is not allowed")
    config = tmp_path / "llmkit.yaml"
    config.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match=r"^llmkit\.yaml:2: YAML anchor &d is not allowed"):
        ModelRegistry(config).aliases()

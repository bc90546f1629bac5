"""Budgets: the limits section of llmkit.yaml, the JSON check that runs before any parser
could recurse (the YAML refusals are tested in test_yamlfile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.budgets import DEFAULT_LIMITS, Limits, json_too_deep, limits_from
from llmkit.errors import ConfigError
from llmkit.models import ModelRegistry


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "depth", "too_deep"),
    [
        (nested(64), 64, False),
        (nested(65), 64, True),
        (nested(100_000), 64, True),
        ('{"a": {"b": [1, {"c": []}]}}', 5, False),
        ('{"a": {"b": [1, {"c": []}]}}', 4, True),
        # Brackets inside strings, escaped quotes included, are text, not structure.
        (json.dumps({"s": "[[[[[[[[[[" * 10, "t": '\\"[[[["'}), 1, False),
        (json.dumps([["\\\\"], "]]]]"]), 2, False),
        # Wide is not deep.
        ("[" + ",".join(["[]"] * 100_000) + "]", 2, False),
        ("", 0, False),
    ],
)
def test_json_depth_is_found_without_parsing(text: str, depth: int, too_deep: bool) -> None:
    assert json_too_deep(text, depth) is too_deep
    assert json_too_deep(text.encode(), depth) is too_deep


def test_limits_default_and_validate() -> None:
    assert limits_from(None) == DEFAULT_LIMITS == Limits()
    assert limits_from({"render_cpu_ms": 50}) == Limits(render_cpu_ms=50)
    for bad, needle in [
        ({"render_cpu": 5}, "unknown limit(s) render_cpu"),
        ({"render_cpu_ms": 0}, "limits.render_cpu_ms must be a whole number from 1 to 60000"),
        ({"render_range": True}, "limits.render_range must be"),
        ({"prompt_file_bytes": 1.5}, "limits.prompt_file_bytes must be"),
        ({"render_output_chars": 10**12}, "from 1 to 67108864"),
        (["render_cpu_ms"], "'limits' must map"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            limits_from(bad)


def test_llmkit_yaml_limits_are_read_and_reread(tmp_path: Path) -> None:
    config = tmp_path / "llmkit.yaml"
    registry = ModelRegistry(config)
    assert registry.limits() == DEFAULT_LIMITS
    config.write_text("models:\n  default: echo\nlimits:\n  render_cpu_ms: 250\n", "utf-8")
    assert registry.limits() == Limits(render_cpu_ms=250)
    assert registry.resolve("default").model == "echo"
    config.write_text("models:\n  default: echo\nlimits:\n  render_cpu_ms: -1\n  x: 1\n", "utf-8")
    # A typo never lifts a budget: the defaults hold, and the error is reported.
    assert registry.limits() == DEFAULT_LIMITS
    with pytest.raises(ConfigError, match="unknown limit"):
        registry.aliases()


def test_an_alias_bomb_in_llmkit_yaml_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "llmkit.yaml"
    config.write_text(
        "models:\n  default:\n    model: echo\n    stop: &a [x, x, x]\n  fast:\n"
        "    model: echo\n    stop: [*a, *a, *a]\n",
        "utf-8",
    )
    with pytest.raises(ConfigError, match=r"^llmkit\.yaml:4: YAML anchor &a is not allowed"):
        ModelRegistry(config).aliases()
    config.write_text("models: " + nested(100_000) + "\n", "utf-8")
    with pytest.raises(ConfigError, match=r"^llmkit\.yaml:1: YAML nests deeper than 64"):
        ModelRegistry(config).aliases()

"""Eval cases written as YAML: the canonical text of a case in a file of its own, as the API
and the importer write it (and `spec` reads back to the same case)."""

from __future__ import annotations

from typing import Any

import yaml

from llmkit.evals.asserts import assertion_to_dict
from llmkit.evals.cases import EvalCase, prompt_key_from_path


def case_to_yaml_dict(case: EvalCase) -> dict[str, Any]:
    """The keys of a case's own file, in canonical order, defaults left out."""
    data: dict[str, Any] = {}
    if prompt_key_from_path(case.file) != case.prompt_key:
        data["prompt"] = case.prompt_key
    data["name"] = case.name
    optional: dict[str, tuple[Any, Any]] = {
        "description": (case.description, None),
        "model": (case.model, None),
        "repeat": (case.repeat, 1),
        "threshold": (case.threshold, 1.0),
        "vars": (case.vars, {}),
        "user_vars": (case.user_vars, {}),
    }
    data.update({key: value for key, (value, default) in optional.items() if value != default})
    user_text = case.user_text
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
        data,
        Dumper=_CaseDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=4096,
    )


def serialize_case(case: EvalCase) -> str:
    """The canonical text of `case` in a file of its own (at `case.file`)."""
    return to_yaml(case_to_yaml_dict(case))

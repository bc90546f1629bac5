"""YAML read one way: safely, with the line of every key and item, a problem at its line.

Eval files, prompt frontmatter and llmkit.yaml are all read here, so that a problem in any of
them reads the same (`YAML syntax error: ...`, `YAML alias *x is not allowed: ...`) and points
at the same kind of line: the key or item it is about, or where the syntax broke.

- Anchors and aliases are refused, and so is nesting deeper than MAX_YAML_DEPTH (see
  `budgets`). Both are found on parser events before anything is composed: a 435-byte alias
  bomb expands to hundreds of megabytes wherever it is serialized, and libyaml's composer
  overflows the C stack (a crash, not an exception) on 100k-deep flow nesting.
- libyaml's parser is used when PyYAML has it: the pure-Python one took most of a large eval
  run's start.
- Dates stay text unless asked for: template variables are JSON values, and `2024-01-01` in an
  eval file means the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from llmkit.budgets import MAX_YAML_DEPTH

_BaseLoader = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


class YamlProblem(Exception):
    """YAML that cannot be loaded: a syntax error (`syntax`) or a refused construct, at a
    1-based line."""

    def __init__(self, line: int, message: str, syntax: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.syntax = syntax

    def located(self, path: str) -> str:
        """`path:line: message`, as every YAML problem is reported."""
        return f"{path}:{self.line}: {self.message}"


class Lines:
    """Line numbers (1-based) of the keys of every mapping and the items of every list in a
    loaded document, looked up by the container object."""

    def __init__(self) -> None:
        self.keys: dict[int, dict[Any, int]] = {}
        self.starts: dict[int, int] = {}

    def of(self, container: object, key: Any = None) -> int | None:
        if key is not None:
            line = self.keys.get(id(container), {}).get(key)
            if line is not None:
                return line
        return self.starts.get(id(container))


@dataclass
class Loaded:
    """A loaded document, the lines of its keys and items, and its duplicate keys as
    (line, key): YAML lets the last one win, which hides a typo."""

    data: Any
    lines: Lines
    duplicates: list[tuple[int, Any]]


def refusal(
    text: str, max_depth: int = MAX_YAML_DEPTH, first_line: int = 1
) -> tuple[int, str] | None:
    """The first anchor, alias or too deeply nested collection in YAML `text`, as (line,
    message), or None. Reads parser events only, and stops at the first problem, so neither a
    bomb nor deep nesting is ever expanded or composed. A syntax error is left to the loader,
    which reports it with its own line. `first_line` is the line `text` starts at."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, yaml.AliasEvent):
                return _line(event, first_line), (
                    f"YAML alias *{event.anchor} is not allowed: write the value out in full"
                    " (anchors and aliases are refused, as they can expand a small file into a"
                    " huge value)"
                )
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                return _line(event, first_line), (
                    f"YAML anchor &{anchor} is not allowed: write the value out in full"
                    " (anchors and aliases are refused, as they can expand a small file into a"
                    " huge value)"
                )
            if isinstance(event, _OPENS):
                depth += 1
                if depth > max_depth:
                    return _line(event, first_line), f"YAML nests deeper than {max_depth} levels"
            elif isinstance(event, _CLOSES):
                depth -= 1
    except yaml.YAMLError:
        return None
    return None


def _line(event: yaml.Event, first_line: int) -> int:
    return event.start_mark.line + first_line if event.start_mark is not None else first_line


class _LineLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    def __init__(self, stream: str, first_line: int = 1) -> None:
        super().__init__(stream)
        self.first_line = first_line
        self.lines = Lines()
        self.duplicates: list[tuple[int, Any]] = []


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Any:
    data: dict[Any, Any] = {}
    loader.lines.starts[id(data)] = node.start_mark.line + loader.first_line
    yield data
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            loader.duplicates.append((key_node.start_mark.line + loader.first_line, key))
        seen.add(key)
    data.update(loader.construct_mapping(node, deep=True))
    loader.lines.keys[id(data)] = {
        loader.construct_object(key_node): key_node.start_mark.line + loader.first_line
        for key_node, _ in node.value
        if isinstance(key_node, yaml.ScalarNode)
    }


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> Any:
    data: list[Any] = []
    loader.lines.starts[id(data)] = node.start_mark.line + loader.first_line
    yield data
    data.extend(loader.construct_sequence(node, deep=True))
    loader.lines.keys[id(data)] = {
        i: n.start_mark.line + loader.first_line for i, n in enumerate(node.value)
    }


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _TextDatesLoader(_LineLoader):
    pass


_TextDatesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(text: str, *, first_line: int = 1, dates: bool = False) -> Loaded:
    """Load one YAML document, refusing anchors, aliases and deep nesting before anything is
    composed. Every line (of keys, items and problems) counts from `first_line`, the line the
    text starts at in its file. Raises YamlProblem."""
    refused = refusal(text, first_line=first_line)
    if refused is not None:
        raise YamlProblem(*refused)
    loader = (_LineLoader if dates else _TextDatesLoader)(text, first_line)
    try:
        return Loaded(loader.get_single_data(), loader.lines, loader.duplicates)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + first_line if mark else first_line
        raise YamlProblem(
            line, f"YAML syntax error: {exc.problem or exc.context}", syntax=True
        ) from None
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow. Its position counts bytes or characters, depending
        # on the parser; the first place the character occurs is where the reader stopped.
        at = text.find(chr(exc.character)) if isinstance(exc.character, int) else -1
        line = text.count("\n", 0, max(at, 0)) + first_line
        raise YamlProblem(
            line, f"YAML syntax error: {str(exc).splitlines()[0]}", syntax=True
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(first_line, f"YAML error: {exc}", syntax=True) from None
    finally:
        loader.dispose()

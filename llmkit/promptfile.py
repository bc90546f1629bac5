"""The prompt file format: YAML frontmatter, then role-commented markdown sections.

A role marker is a line that is exactly `<!-- role:system -->` (or user/assistant; spaces inside
the comment are tolerated). Roles are split here, before any template is rendered, so a
variable's value can never open a new message.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from llmkit.config import PROMPTS_DIR
from llmkit.errors import InvalidKey, PromptFormatError
from llmkit.yamlfile import YamlProblem, load

PROMPTS_PREFIX = PROMPTS_DIR + "/"
PROMPT_SUFFIX = ".md"

ROLES = ("system", "user", "assistant")
MARKER_RE = re.compile(r"^<!--\s*role\s*:\s*(\w+)\s*-->$")
# Anything that looks like it wants to be a marker, to report unknown roles instead of
# silently keeping them as text.
MARKER_LIKE_RE = re.compile(r"^\s*<!--\s*role\s*:.*-->\s*$")
TEMPLATE_RE = re.compile(r"\{\{|\{%|\{#")
KEY_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
# Names Windows reserves for devices, with any extension and in any case: a repository holding
# `prompts/con.md` or `prompts/aux/x.md` cannot be checked out there.
WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{port}{n}" for port in ("COM", "LPT") for n in range(10)]
)
# What a prompt file's text may not hold: NUL makes git treat the file as binary (no diffs, no
# reviews), and a lone surrogate is not a character and cannot be written as UTF-8.
_NOT_TEXT_RE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
MAX_KEY_LENGTH = 200
PROMPT_TYPES = ("static", "dynamic_system", "dynamic_both")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")

_number = (int, float)

# Known frontmatter keys, in canonical order, with the types they accept.
FIELDS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "description": (str,),
    "type": (str,),
    "chat": (bool,),
    "temperature": _number,
    "max_tokens": (int,),
    "top_p": _number,
    "presence_penalty": _number,
    "frequency_penalty": _number,
    "stop": (str, list),
    "seed": (int,),
    "json_mode": (bool,),
    "json_schema": (dict,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "reasoning_effort": (str,),
    "fallbacks": (list,),
    "api_base": (str,),
    "timeout": _number,
    "tags": (list,),
}


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class PromptFile:
    """A parsed prompt file. `messages` are the sections in file order."""

    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    # File line of each section's first content line, for error messages; not part of equality.
    lines: list[int] = field(default_factory=list, compare=False, repr=False)

    @property
    def system(self) -> str:
        """The first system section (LLMKit's `system` field)."""
        return next((m.content for m in self.messages if m.role == "system"), "")

    @property
    def user(self) -> str:
        """The user template: the last section when it is a user section (LLMKit's `user`)."""
        if self.messages and self.messages[-1].role == "user":
            return self.messages[-1].content
        return ""

    @property
    def model(self) -> str:
        return str(self.meta.get("model", "default"))

    @property
    def is_chat(self) -> bool:
        return bool(self.meta.get("chat", False))

    @property
    def json_mode(self) -> bool:
        return bool(self.meta.get("json_mode", False))

    @property
    def prompt_type(self) -> str:
        explicit = self.meta.get("type")
        if explicit:
            return str(explicit)
        if not any(TEMPLATE_RE.search(m.content) for m in self.messages):
            return "static"
        if self.messages and self.messages[-1].role == "user":
            return "dynamic_both"
        return "dynamic_system"


def validate_key(key: str) -> str:
    """A prompt key: `[A-Za-z0-9._-]` segments joined by `/`, portable to every file system git
    runs on (no Windows device names, no segment ending in a dot). Raises InvalidKey naming
    it. Keys that differ only in case are refused where prompts are created (see
    `case_conflict`), as that needs the other keys."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("Prompt key must be a non-empty string", param="key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"Prompt key is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed",
            param="key",
        )
    if key.isdigit():
        raise InvalidKey(
            f"Invalid prompt key {key!r}: a key of digits only would read as an id", param="key"
        )
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"Invalid prompt key {key!r}: empty, '.' or '..' segment", param="key")
        if not KEY_SEGMENT_RE.match(segment):
            raise InvalidKey(
                f"Invalid prompt key {key!r}: segments use only letters, digits, '.', '_' and '-',"
                " and do not start with '.'",
                param="key",
            )
        if segment.endswith("."):
            raise InvalidKey(
                f"Invalid prompt key {key!r}: segment {segment!r} ends with '.', which Windows"
                " drops from file names",
                param="key",
            )
        if segment.split(".", 1)[0].upper() in WINDOWS_RESERVED:
            raise InvalidKey(
                f"Invalid prompt key {key!r}: {segment!r} is a device name on Windows"
                f" ({', '.join(sorted(WINDOWS_RESERVED))}, with any extension, in any case),"
                " so the repository could not be checked out there",
                param="key",
            )
    return key


def case_conflict(key: str, existing: Iterable[str]) -> str | None:
    """An existing key that `key` collides with on a case-insensitive file system (macOS,
    Windows): the same key or folder spelled with other capitals (`Support/a` beside
    `support/b`). None when there is none."""
    wanted = _prefixes(key)
    folded = {p.casefold(): p for p in wanted}
    for other in existing:
        for prefix in _prefixes(other):
            mine = folded.get(prefix.casefold())
            if mine is not None and mine != prefix:
                return other
    return None


def case_collisions(keys: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs (key, earlier key) among `keys` whose paths collide on a case-insensitive file
    system, each key reported once, against the first key (in sorted order) it collides with."""
    seen: dict[str, tuple[str, str]] = {}
    found = []
    for key in sorted(keys):
        for prefix in _prefixes(key):
            first = seen.setdefault(prefix.casefold(), (prefix, key))
            if first[0] != prefix:
                found.append((key, first[1]))
                break
    return found


def _prefixes(key: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`, `a/b/c`]: the folders and the file a key occupies."""
    parts = key.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def is_prompt_path(rel_path: str) -> bool:
    """Whether `rel_path` (relative to the repository) names a prompt file, by its place."""
    return rel_path.startswith(PROMPTS_PREFIX) and rel_path.endswith(PROMPT_SUFFIX)


def key_from_path(rel_path: str) -> str:
    """`prompts/support/triage.md` -> `support/triage`."""
    if not is_prompt_path(rel_path):
        raise InvalidKey(f"{rel_path} is not a prompt file ({PROMPTS_DIR}/<key>{PROMPT_SUFFIX})")
    return validate_key(rel_path[len(PROMPTS_PREFIX) : -len(PROMPT_SUFFIX)])


def path_for_key(key: str) -> str:
    return f"{PROMPTS_PREFIX}{validate_key(key)}{PROMPT_SUFFIX}"


def validate_meta(meta: dict[str, Any]) -> None:
    """Known keys with the right types and ranges. The error (the first of `meta_problems`)
    has `param` naming the key."""
    problems = meta_problems(meta)
    if problems:
        name, message = problems[0]
        err = PromptFormatError(message)
        err.param = name
        raise err


def meta_problems(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a frontmatter mapping, as (key, message): unknown keys (with the known
    key each most looks like) and wrong types, then values out of range."""
    problems: list[tuple[str, str]] = []
    typed: dict[str, Any] = {}
    for name, value in meta.items():
        if name not in FIELDS:
            problems.append((str(name), unknown_key_message(name)))
            continue
        types = FIELDS[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            problems.append((name, f"Frontmatter key {name!r} must be {names}, got {value!r}"))
            continue
        typed[name] = value
    ranges = {"temperature": (0, 2), "top_p": (0, 1), "max_tokens": (1, None), "timeout": (0, None)}
    for name, (low, high) in ranges.items():
        # Written so that NaN, which compares false with everything, is out of range.
        if name in typed and not (typed[name] >= low and (high is None or typed[name] <= high)):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            problems.append((name, f"{name} must be {bounds}, got {typed[name]}"))
    choices = {"type": PROMPT_TYPES, "reasoning_effort": REASONING_EFFORTS}
    for name, allowed in choices.items():
        if name in typed and typed[name] not in allowed:
            problems.append(
                (name, f"{name} must be one of {', '.join(allowed)}, got {typed[name]!r}")
            )
    if "model" in typed and not typed["model"].strip():
        problems.append(("model", "model must not be empty"))
    for name in ("fallbacks", "tags"):
        if name in typed and not all(isinstance(v, str) for v in typed[name]):
            problems.append((name, f"{name} must be a list of strings"))
    for name, value in meta.items():
        bad = surrogate_in(value)
        if bad is not None:
            problems.append(
                (
                    str(name),
                    (
                        f"Frontmatter key {name!r} holds a lone surrogate (U+{ord(bad):04X}), "
                        "which is"
                        " not a character and cannot be stored as UTF-8"
                    ),
                )
            )
    return problems


def unknown_key_message(name: Any) -> str:
    """`Unknown frontmatter key 'temprature'; did you mean 'temperature'? (known keys: ...)`."""
    close = difflib.get_close_matches(str(name), tuple(FIELDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"Unknown frontmatter key {name!r}{hint} (known keys: {', '.join(FIELDS)})"


def surrogate_in(value: Any) -> str | None:
    """The first lone surrogate in the strings of a YAML or JSON value (keys included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            match = _SURROGATE_RE.search(item)
            if match is not None:
                return match.group()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


_FRONTMATTER_RE = re.compile(r"\A---[ \t]*\n(.*?)^---[ \t]*(?:\n|\Z)", re.DOTALL | re.MULTILINE)


def parse(text: str, path: str | None = None) -> PromptFile:
    """Parse a prompt file. Errors name the file and line; the first one found is raised."""
    prompt, problems = diagnose(text, path)
    if problems:
        raise problems[0]
    return prompt


def diagnose(text: str, path: str | None = None) -> tuple[PromptFile, list[PromptFormatError]]:
    """Parse a prompt file and find every problem in it, not only the first (what lint reports),
    each naming the file and line. The PromptFile holds what could be read: the frontmatter
    keys that are valid, and the sections around any unknown role marker."""
    problems: list[PromptFormatError] = []
    # Some editors start UTF-8 files with a byte order mark, which would hide the frontmatter.
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    refused = not_text(text)
    if refused is not None:
        problems.append(
            PromptFormatError(f"Prompt text holds {refused[1]}", path=path, line=refused[0])
        )
    meta: dict[str, Any] = {}
    body_start = 1
    match = _FRONTMATTER_RE.match(text)
    if match:
        meta = _read_frontmatter(match.group(1), path, problems)
        body_start = text[: match.end()].count("\n") + 1
        body = text[match.end() :]
    elif text.startswith("---\n"):
        problems.append(
            PromptFormatError("Frontmatter is not closed by a '---' line", path=path, line=1)
        )
        return PromptFile(), problems
    else:
        body = text
    messages, lines = _split_sections(body, body_start, path, problems)
    return PromptFile(meta=meta, messages=messages, lines=lines), problems


def _read_frontmatter(
    raw: str, path: str | None, problems: list[PromptFormatError]
) -> dict[str, Any]:
    """The valid keys of the frontmatter `raw`; a problem for each one that is not, or one for
    frontmatter that cannot be read at all."""
    # Line 1 of the frontmatter is line 2 of the file. Dates load as dates, as the file is
    # written back with the dumper that reads them so.
    try:
        loaded = load(raw, first_line=2, dates=True)
    except YamlProblem as problem:
        prefix = "Malformed frontmatter" if problem.syntax else "Frontmatter"
        problems.append(
            PromptFormatError(f"{prefix}: {problem.message}", path=path, line=problem.line)
        )
        return {}
    if loaded.data is None:
        return {}
    if not isinstance(loaded.data, dict):
        problems.append(
            PromptFormatError("Frontmatter must be a mapping of keys", path=path, line=2)
        )
        return {}
    meta = _meta_in_canonical_order(loaded.data)
    found = meta_problems(meta)
    for name, message in found:
        err = PromptFormatError(message, path=path, line=loaded.lines.of(loaded.data, name) or 2)
        err.param = name
        problems.append(err)
    bad = {name for name, _ in found}
    return {name: value for name, value in meta.items() if str(name) not in bad}


def not_text(text: str) -> tuple[int, str] | None:
    """The first character a prompt file may not hold, as (1-based line, what it is)."""
    bad = _NOT_TEXT_RE.search(text)
    if bad is None:
        return None
    line = text.count("\n", 0, bad.start()) + 1
    if bad.group() == "\x00":
        return line, "a NUL character (U+0000), which makes git treat the file as binary"
    return line, (
        f"a lone surrogate (U+{ord(bad.group()):04X}), which is not a character and cannot be"
        " stored as UTF-8"
    )


def _meta_in_canonical_order(meta: dict[str, Any]) -> dict[str, Any]:
    order = {name: i for i, name in enumerate(FIELDS)}
    return dict(sorted(meta.items(), key=lambda kv: (order.get(str(kv[0]), len(order)), 0)))


def _split_sections(
    body: str, first_line: int, path: str | None, problems: list[PromptFormatError]
) -> tuple[list[Message], list[int]]:
    """Sections and the 1-based file line of each one's first content line. An unknown role
    marker is a problem, and its line stays in its section as text."""
    sections: list[tuple[str, list[str], int]] = []
    role, lines, start, explicit = "system", [], first_line, False
    for offset, line in enumerate(body.split("\n")):
        if not MARKER_LIKE_RE.match(line):
            lines.append(line)
            continue
        marker = MARKER_RE.match(line.strip())
        if marker is None or marker.group(1) not in ROLES:
            found = marker.group(1) if marker else line.strip()
            problems.append(
                PromptFormatError(
                    f"Unknown role marker {found!r}; use one of: "
                    + ", ".join(f"<!-- role:{r} -->" for r in ROLES),
                    path=path,
                    line=first_line + offset,
                )
            )
            lines.append(line)  # kept as text, so the lines after it keep their numbers
            continue
        if explicit or _strip_blank(lines):
            sections.append((role, lines, start))
        role, lines, start, explicit = marker.group(1), [], first_line + offset + 1, True
    if explicit or _strip_blank(lines):
        sections.append((role, lines, start))
    messages, starts = [], []
    for role, lines, start in sections:
        leading = next((i for i, line in enumerate(lines) if line.strip()), 0)
        messages.append(Message(role, "\n".join(_strip_blank(lines))))
        starts.append(start + leading)
    return messages, starts


def section_text(text: str) -> str:
    """`text` as a section holds it: LF line ends, no leading or trailing blank lines."""
    return "\n".join(_strip_blank(text.replace("\r\n", "\n").split("\n")))


def _strip_blank(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def is_marker(line: str) -> bool:
    return bool(MARKER_LIKE_RE.match(line))


class _MetaDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML writes NEL (U+0085) raw inside quoted scalars, where its loader folds it into a
    # space; the double-quoted style escapes it as \N.
    style = '"' if "\x85" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_MetaDumper.add_representer(str, _represent_str)


def _dump_meta(meta: dict[str, Any]) -> str:
    if not meta:
        return ""
    return yaml.dump(
        _meta_in_canonical_order(meta),
        Dumper=_MetaDumper,
        sort_keys=False,
        allow_unicode=True,
        width=1000,
    )


def serialize(prompt: PromptFile) -> str:
    """The canonical text of a prompt file."""
    for m in prompt.messages:
        if m.role not in ROLES:
            raise PromptFormatError(f"Unknown role {m.role!r}; use one of: {', '.join(ROLES)}")
        lines = m.content.split("\n")
        if any(is_marker(line) for line in lines):
            raise PromptFormatError(
                f"A {m.role} message contains a line that is a role marker; role markers"
                " cannot appear inside message text"
            )
        if any(line.endswith("\r") for line in lines):
            raise PromptFormatError(
                f"A {m.role} message has a line ending in a carriage return (\\r\\n);"
                " the file format stores lines with \\n only"
            )
        refused = not_text(m.content)
        if refused is not None:
            raise PromptFormatError(f"A {m.role} message holds {refused[1]}")
        if m.content != "\n".join(_strip_blank(lines)):
            raise PromptFormatError(
                f"A {m.role} message starts or ends with a blank line, which the file format drops"
            )
    validate_meta(prompt.meta)
    parts = ["---\n", _dump_meta(prompt.meta), "---\n"]
    sections = [
        f"<!-- role:{m.role} -->\n" + (m.content + "\n" if m.content else "")
        for m in prompt.messages
    ]
    return "".join(parts) + "\n".join(sections)

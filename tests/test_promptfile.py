"""The prompt file format: parse, serialize, keys, validated frontmatter, errors with file:line."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.errors import InvalidKey, PromptFormatError
from llmkit.promptfile import (
    FIELDS,
    PROMPT_TYPES,
    REASONING_EFFORTS,
    ROLES,
    Message,
    PromptFile,
    case_collisions,
    case_conflict,
    is_marker,
    key_from_path,
    parse,
    path_for_key,
    serialize,
    validate_key,
    validate_meta,
)

PATH = "prompts/demo.md"

# -- strategies ---------------------------------------------------------------------------

# Any text a YAML scalar can carry; surrogates cannot be encoded as UTF-8 at all.
yaml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
short_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | yaml_text
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
    max_leaves=8,
)


def number(low: float, high: float) -> st.SearchStrategy[int | float]:
    return st.integers(int(low), int(high)) | st.floats(low, high, allow_nan=False)


META_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": short_text.filter(lambda s: s.strip() != ""),
    "description": yaml_text,
    "type": st.sampled_from(PROMPT_TYPES),
    "chat": st.booleans(),
    "temperature": number(0, 2),
    "max_tokens": st.integers(1, 10**6),
    "top_p": number(0, 1),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "stop": yaml_text | st.lists(yaml_text, max_size=4),
    "seed": st.integers(-(2**63), 2**63),
    "json_mode": st.booleans(),
    "json_schema": st.dictionaries(short_text, json_value, max_size=4),
    "tools": st.lists(st.dictionaries(short_text, json_value, max_size=3), max_size=3),
    "tool_choice": yaml_text | st.dictionaries(short_text, json_value, max_size=3),
    "reasoning_effort": st.sampled_from(REASONING_EFFORTS),
    "fallbacks": st.lists(yaml_text, max_size=3),
    "api_base": yaml_text,
    "timeout": number(0, 10**6),
    "tags": st.lists(yaml_text, max_size=3),
}
assert set(META_VALUES) == set(FIELDS), "every known frontmatter key has a strategy"


# Strategies are built once: one built inside a composite is built again, and its properties
# worked out again, at every draw.
meta_names = st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=len(FIELDS))


@st.composite
def metas(draw: st.DrawFn) -> dict[str, Any]:
    return {name: draw(META_VALUES[name]) for name in draw(meta_names)}


# A line of message text: anything but a newline or NUL (refused: git would see a binary file),
# and not ending in a carriage return (the format stores lines with \n only, and reads \r\n
# files as \n files).
line_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00"), max_size=40
).filter(lambda line: not line.endswith("\r"))
marker_ish = st.sampled_from(
    ["<!-- role:user -->", "  <!-- role:system -->", "<!--role:assistant-->", "<!-- role:tool -->"]
)


content_lines = st.lists(line_text | st.just(""), max_size=6)


@st.composite
def contents(draw: st.DrawFn) -> str:
    """Message text with no marker lines and no leading/trailing blank lines (may be empty)."""
    lines = draw(content_lines)
    lines = [line for line in lines if not is_marker(line)]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


message_lists = st.lists(st.builds(Message, st.sampled_from(ROLES), contents()), max_size=5)
prompt_metas = metas()


@st.composite
def prompts(draw: st.DrawFn) -> PromptFile:
    return PromptFile(meta=draw(prompt_metas), messages=draw(message_lists))


# -- round trips ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts())
def test_parse_of_serialize_is_identity(prompt: PromptFile) -> None:
    text = serialize(prompt)
    assert parse(text, PATH) == prompt


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts())
def test_canonical_text_survives_parse_and_serialize(prompt: PromptFile) -> None:
    canonical = serialize(prompt)
    assert serialize(parse(canonical, PATH)) == canonical
    # and the canonical text of the re-parsed prompt is stable under another round
    assert serialize(parse(serialize(parse(canonical)))) == canonical


@given(prompts())
@settings(max_examples=100, deadline=None)
def test_serialized_files_start_with_frontmatter_and_mark_every_section(prompt: PromptFile) -> None:
    text = serialize(prompt)
    assert text.startswith("---\n")
    markers = [line for line in text.split("\n") if is_marker(line)]
    assert markers == [f"<!-- role:{m.role} -->" for m in prompt.messages]


def test_a_canonical_file_is_byte_for_byte_stable() -> None:
    text = (
        "---\n"
        "model: openai/gpt-4o-mini\n"
        "description: Friendly assistant\n"
        "chat: true\n"
        "temperature: 0.7\n"
        "max_tokens: 2048\n"
        "json_mode: false\n"
        "---\n"
        "<!-- role:system -->\n"
        "You are a helpful assistant with a {{ personality }} personality.\n"
        "\n"
        "<!-- role:user -->\n"
        "{{ question }}\n"
    )
    prompt = parse(text, PATH)
    assert serialize(prompt) == text
    assert prompt.meta == {
        "model": "openai/gpt-4o-mini",
        "description": "Friendly assistant",
        "chat": True,
        "temperature": 0.7,
        "max_tokens": 2048,
        "json_mode": False,
    }


def test_serialize_orders_frontmatter_keys_canonically() -> None:
    prompt = PromptFile(meta={"temperature": 0.5, "model": "m", "chat": True}, messages=[])
    assert serialize(prompt) == "---\nmodel: m\nchat: true\ntemperature: 0.5\n---\n"


# -- sections and whitespace -----------------------------------------------------------------


def test_role_markers_tolerate_spaces_inside_the_comment() -> None:
    text = "<!--role:system-->\nsys\n<!--   role :  user   -->\nhi\n<!-- role:assistant -->\nyo\n"
    prompt = parse(text, PATH)
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("system", "sys"),
        ("user", "hi"),
        ("assistant", "yo"),
    ]


def test_text_before_the_first_marker_is_the_system_section() -> None:
    prompt = parse("---\nmodel: m\n---\nBe brief.\n\n<!-- role:user -->\n{{ q }}\n", PATH)
    assert prompt.messages == [Message("system", "Be brief."), Message("user", "{{ q }}")]
    assert prompt.system == "Be brief."
    assert prompt.user == "{{ q }}"


def test_a_file_without_frontmatter_or_markers_is_one_system_message() -> None:
    prompt = parse("Just a system prompt.\nSecond line.\n", PATH)
    assert prompt.meta == {}
    assert prompt.messages == [Message("system", "Just a system prompt.\nSecond line.")]


def test_blank_text_before_the_first_marker_is_not_a_section() -> None:
    prompt = parse("---\n---\n\n   \n<!-- role:user -->\nhi\n", PATH)
    assert prompt.messages == [Message("user", "hi")]


def test_few_shot_sections_keep_their_order() -> None:
    text = (
        "<!-- role:system -->\nClassify the sentiment.\n"
        "<!-- role:user -->\nI love it\n"
        "<!-- role:assistant -->\npositive\n"
        "<!-- role:user -->\nI hate it\n"
        "<!-- role:assistant -->\nnegative\n"
        "<!-- role:user -->\n{{ text }}\n"
    )
    prompt = parse(text, PATH)
    assert [m.role for m in prompt.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert prompt.user == "{{ text }}"
    assert prompt.prompt_type == "dynamic_both"


def test_whitespace_rules_drop_edge_blank_lines_and_keep_everything_else() -> None:
    text = (
        "<!-- role:user -->\n"
        "\n"
        "   \n"
        "    indented line\n"
        "\n"
        "\n"
        "  two  inner   spaces  \n"
        "\t\n"
        "\n"
        "<!-- role:assistant -->\n"
        "\n"
    )
    prompt = parse(text, PATH)
    assert prompt.messages == [
        Message("user", "    indented line\n\n\n  two  inner   spaces  "),
        Message("assistant", ""),
    ]


def test_an_empty_explicit_section_is_kept() -> None:
    prompt = parse("<!-- role:system -->\n<!-- role:user -->\nhi\n", PATH)
    assert prompt.messages == [Message("system", ""), Message("user", "hi")]
    assert parse(serialize(prompt)) == prompt


def test_crlf_files_read_like_lf_files() -> None:
    lf = "---\nmodel: m\n---\n<!-- role:system -->\nHi {{ name }}\n\n<!-- role:user -->\nq\n"
    assert parse(lf.replace("\n", "\r\n"), PATH) == parse(lf, PATH)


def test_a_byte_order_mark_does_not_hide_the_frontmatter() -> None:
    text = "---\nmodel: m\n---\n<!-- role:user -->\nq\n"
    assert parse("\ufeff" + text, PATH) == parse(text, PATH)
    assert parse("\ufeff" + text, PATH).meta == {"model": "m"}


def test_a_marker_like_line_inside_text_is_never_content() -> None:
    # A line that merely mentions a marker is text; a line that *is* one starts a section.
    prompt = parse("<!-- role:user -->\nsay <!-- role:system --> please\n", PATH)
    assert prompt.messages == [Message("user", "say <!-- role:system --> please")]


def test_section_lines_point_at_the_first_content_line() -> None:
    prompt = parse(
        "---\nmodel: m\n---\n<!-- role:system -->\n\n\nfirst\n<!-- role:user -->\nq\n", PATH
    )
    assert prompt.lines == [7, 9]


# -- serialize refuses what the format cannot hold -------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Message("user", "a\n<!-- role:system -->\nb"),
        Message("user", "\nleading blank line"),
        Message("user", "trailing blank line\n"),
        Message("user", "windows\r\nline"),
        Message("tool", "not a role"),
        Message("user", "a NUL \x00 byte"),
        Message("user", "a lone surrogate \ud800"),
    ],
)
def test_serialize_refuses_text_the_format_cannot_hold(message: Message) -> None:
    with pytest.raises(PromptFormatError):
        serialize(PromptFile(meta={}, messages=[message]))


def test_serialize_refuses_invalid_meta() -> None:
    with pytest.raises(PromptFormatError, match="Unknown frontmatter key 'colour'"):
        serialize(PromptFile(meta={"colour": "red"}, messages=[]))


# -- derived prompt type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<!-- role:system -->\nYou are terse.\n", "static"),
        ("<!-- role:system -->\nHi\n<!-- role:user -->\nWhat is 2+2?\n", "static"),
        ("<!-- role:system -->\nYou are {{ persona }}.\n", "dynamic_system"),
        ("<!-- role:system -->\n{% if x %}a{% endif %}\n", "dynamic_system"),
        ("<!-- role:system -->\nsys\n<!-- role:user -->\n{{ q }}\n", "dynamic_both"),
        ("<!-- role:system -->\n{{ s }}\n<!-- role:user -->\nplain\n", "dynamic_both"),
        ("<!-- role:user -->\n{{ q }}\n", "dynamic_both"),
        # few-shot turns that end with an assistant turn: no user template to fill in
        (
            "<!-- role:system -->\n{{ s }}\n<!-- role:user -->\nex\n<!-- role:assistant -->\nans\n",
            "dynamic_system",
        ),
        ("---\ntype: dynamic_both\n---\n<!-- role:system -->\nplain\n", "dynamic_both"),
    ],
)
def test_prompt_type_is_derived_unless_given(text: str, expected: str) -> None:
    assert parse(text, PATH).prompt_type == expected


def test_defaults_of_the_convenience_properties() -> None:
    prompt = parse("<!-- role:assistant -->\nhello\n", PATH)
    assert (prompt.system, prompt.user, prompt.model, prompt.is_chat, prompt.json_mode) == (
        "",
        "",
        "default",
        False,
        False,
    )


# -- frontmatter validation and error positions ----------------------------------------------


def test_unknown_frontmatter_key_is_an_error_naming_the_file_and_line() -> None:
    text = "---\nmodel: m\ntemperature: 0.2\ncolour: red\n---\nhi\n"
    with pytest.raises(PromptFormatError) as info:
        parse(text, PATH)
    assert (info.value.path, info.value.line) == (PATH, 4)
    assert str(info.value).startswith(f"{PATH}:4: Unknown frontmatter key 'colour'")
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("frontmatter", "line", "needle"),
    [
        ("model: m\ntemperature: hot\n", 3, "'temperature' must be int or float"),
        ("temperature: 2.5\n", 2, "temperature must be between 0 and 2"),
        ("chat: 1\n", 2, "'chat' must be bool"),
        ("max_tokens: true\n", 2, "'max_tokens' must be int"),
        ("max_tokens: 0\n", 2, "max_tokens must be at least 1"),
        ("model: m\ntype: weird\n", 3, "type must be one of static"),
        ("reasoning_effort: extreme\n", 2, "reasoning_effort must be one of"),
        ("model: '  '\n", 2, "model must not be empty"),
        ("tags: [a, 1]\n", 2, "tags must be a list of strings"),
        ("- just\n- a list\n", 2, "Frontmatter must be a mapping"),
    ],
)
def test_invalid_frontmatter_values_name_file_line_and_key(
    frontmatter: str, line: int, needle: str
) -> None:
    with pytest.raises(PromptFormatError) as info:
        parse(f"---\n{frontmatter}---\nhi\n", PATH)
    assert info.value.line == line
    assert needle in info.value.detail
    assert str(info.value).startswith(f"{PATH}:{line}: ")


def test_nan_temperature_is_refused() -> None:
    with pytest.raises(PromptFormatError, match="temperature"):
        parse("---\ntemperature: .nan\n---\nhi\n", PATH)


def test_malformed_yaml_names_file_and_line() -> None:
    text = "---\nmodel: m\ndescription: x\n  nested: wrong\n---\nhi\n"
    with pytest.raises(PromptFormatError) as info:
        parse(text, PATH)
    assert info.value.path == PATH
    assert info.value.line == 4
    assert "Malformed frontmatter" in str(info.value)
    assert "\n" not in str(info.value)


def test_unclosed_frontmatter_is_an_error_on_line_one() -> None:
    with pytest.raises(PromptFormatError) as info:
        parse("---\nmodel: m\n<!-- role:user -->\nhi\n", PATH)
    assert (info.value.path, info.value.line) == (PATH, 1)
    assert "not closed" in info.value.detail


@pytest.mark.parametrize(
    ("marker", "found"),
    [
        ("<!-- role:tool -->", "'tool'"),
        ("<!-- role:User -->", "'User'"),
        ("<!-- role: -->", "<!-- role: -->"),
    ],
)
def test_unknown_role_marker_names_file_line_and_marker(marker: str, found: str) -> None:
    text = f"---\nmodel: m\n---\n<!-- role:system -->\nsys\n{marker}\nhi\n"
    with pytest.raises(PromptFormatError) as info:
        parse(text, PATH)
    assert (info.value.path, info.value.line) == (PATH, 6)
    assert found in info.value.detail
    assert "<!-- role:user -->" in info.value.detail  # says what is allowed


def test_errors_without_a_path_still_name_the_line() -> None:
    with pytest.raises(PromptFormatError) as info:
        parse("<!-- role:robot -->\n")
    assert info.value.line == 1


def test_validate_meta_accepts_every_known_key() -> None:
    meta = {
        "model": "m",
        "description": "d",
        "type": "static",
        "chat": True,
        "temperature": 1,
        "max_tokens": 5,
        "top_p": 0.5,
        "presence_penalty": -1,
        "frequency_penalty": 1.5,
        "stop": ["\n"],
        "seed": 7,
        "json_mode": True,
        "json_schema": {"type": "object"},
        "tools": [{"type": "function"}],
        "tool_choice": "auto",
        "reasoning_effort": "low",
        "fallbacks": ["m2"],
        "api_base": "http://127.0.0.1:1",
        "timeout": 3.5,
        "tags": ["t"],
    }
    assert set(meta) == set(FIELDS)
    validate_meta(meta)
    assert parse(serialize(PromptFile(meta=meta, messages=[]))).meta == meta


# -- keys from paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["a", "support/triage", "A-b_c.d/e.f", "v1.2/x", "_private", "0abc"]
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key
    assert path_for_key(key) == f"prompts/{key}.md"
    assert key_from_path(path_for_key(key)) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "../x",
        "a/../b",
        "/abs",
        "a//b",
        "a/",
        "./a",
        "a@b",
        "a b",
        ".git",
        "a/.git/b",
        ".hidden",
        "a\x00b",
        "a\\b",
        "é",
        "x" * 201,
        "123",
    ],
)
def test_invalid_keys_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    assert info.value.status == 400
    if key and len(key) <= 200:
        assert repr(key) in info.value.message


@pytest.mark.parametrize(
    "path", ["prompts/a.txt", "evals/a.md", "a.md", "prompts/../a.md", "prompts/.md"]
)
def test_key_from_path_refuses_non_prompt_paths(path: str) -> None:
    with pytest.raises(InvalidKey):
        key_from_path(path)


# -- portable keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "CON",
        "con",
        "Aux",
        "nul",
        "PRN",
        "com1",
        "COM9",
        "lpt1",
        "Lpt9",
        "com0",
        "con.txt",
        "aux.tar.gz",
        "support/con",
        "con/x",
        "a/b/LPT3.v2",
    ],
)
def test_windows_device_names_are_refused_in_any_case_and_with_any_extension(key: str) -> None:
    with pytest.raises(InvalidKey, match="device name on Windows") as info:
        validate_key(key)
    assert info.value.param == "key"


@pytest.mark.parametrize("key", ["dir./x", "x.", "a/b./c", "v1../x"])
def test_segments_ending_in_a_dot_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey, match="ends with '.'"):
        validate_key(key)


@pytest.mark.parametrize(
    "key", ["console", "com10", "auxiliary", "connect/x", "lpt", "nul_x", "x.con"]
)
def test_names_that_only_look_like_device_names_are_fine(key: str) -> None:
    assert validate_key(key) == key


def test_a_case_conflict_is_found_for_the_key_and_for_each_of_its_folders() -> None:
    existing = ["support/triage", "hello", "team/a/b"]
    assert case_conflict("Hello", existing) == "hello"
    assert case_conflict("Support/other", existing) == "support/triage"
    assert case_conflict("team/A/c", existing) == "team/a/b"
    assert case_conflict("TEAM", existing) == "team/a/b"
    assert case_conflict("hello", existing) is None  # the same key: "already exists" instead
    assert case_conflict("support/other", existing) is None
    assert case_conflict("hello2", existing) is None


def test_case_collisions_are_reported_once_against_the_first_key() -> None:
    keys = ["a", "A", "b/x", "B/y", "c", "b/z"]
    assert case_collisions(keys) == [("a", "A"), ("b/x", "B/y"), ("b/z", "B/y")]
    assert case_collisions(["a", "b", "a/b"]) == []


# -- text a prompt file cannot hold, and YAML that expands or nests ----------------------------


def test_nul_and_lone_surrogates_in_text_are_refused_by_line() -> None:
    with pytest.raises(PromptFormatError, match=r"^prompts/demo\.md:3: .*NUL character") as info:
        parse("<!-- role:system -->\nfine\nbad \x00 here\n", PATH)
    assert info.value.status == 400
    surrogate = r"^prompts/demo\.md:2: .*lone surrogate \(U\+DC00\)"
    with pytest.raises(PromptFormatError, match=surrogate):
        parse("<!-- role:system -->\nx\udc00\n", PATH)


def test_surrogates_in_frontmatter_values_are_refused_by_key() -> None:
    # From a file, YAML refuses the escape itself; from the API's JSON, validate_meta does.
    with pytest.raises(PromptFormatError, match="Malformed frontmatter"):
        parse('---\nmodel: x\ndescription: "a\\ud800"\n---\nhi\n', PATH)
    with pytest.raises(PromptFormatError, match="'description' holds a lone surrogate") as info:
        validate_meta({"model": "x", "description": "a\ud800"})
    assert info.value.param == "description"
    with pytest.raises(PromptFormatError, match="'json_schema' holds a lone surrogate"):
        validate_meta({"json_schema": {"properties": {"\ud800": {}}}})
    assert parse('---\ndescription: "a\\0b"\n---\nhi\n').meta["description"] == "a\x00b"


# The frontmatter of the 435-byte bomb: each line multiplies the one before by ten.
ALIAS_BOMB = """\
---
model: default
tags: &a ["x","x","x","x","x","x","x","x","x","x"]
description: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
json_schema:
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
---
<!-- role:system -->
Hi.
"""


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (ALIAS_BOMB, 3, "YAML anchor &a is not allowed"),
        ("---\nmodel: x\njson_schema:\n  a: !!str &s one\n---\nhi\n", 4, "anchor &s"),
        (
            "---\nmodel: x\njson_schema:\n  type: object\n  properties:\n    p: *q\n---\nhi\n",
            6,
            "YAML alias \\*q is not allowed",
        ),
        (
            "---\nmodel: x\njson_schema: " + "[" * 100_000 + "]" * 100_000 + "\n---\nhi\n",
            3,
            "YAML nests deeper than 64 levels",
        ),
        (
            "---\nmodel: x\njson_schema:\n"
            + "".join(" " * (2 * i + 2) + f"k{i}:\n" for i in range(100))
            + "---\nhi\n",
            67,
            "YAML nests deeper than 64 levels",
        ),
    ],
    ids=[
        "alias bomb",
        "anchor in json_schema",
        "alias in json_schema",
        "flow nesting",
        "block nesting",
    ],
)
def test_yaml_anchors_aliases_and_deep_nesting_are_refused_before_loading(
    text: str, line: int, needle: str
) -> None:
    # Loading any of these would expand a bomb into gigabytes or overflow libyaml's C stack
    # (a crash of the whole process, not an exception).
    with pytest.raises(PromptFormatError, match=needle) as info:
        parse(text, PATH)
    assert info.value.line == line
    assert len(info.value.message) < 300

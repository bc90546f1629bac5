"""Replay every call of LLMKit's web UI (tests/ui_contract.py) against the real app, in the
UI's order, and check that every field it reads is there in the JSON type it expects.

One app serves the whole replay: the calls build on each other as they do in the browser (a
prompt is created then edited, a completion's id names the log the panel opens, an eval run
gives the result that is scored). Each call is its own test so that each gap is one entry of
GAPS: a call that fails today is an expected failure naming what llmkit answers instead, and
turns into a failure the moment the gap closes without its entry being removed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_fixtures import SEED_FILES, ApiEnv, running_api
from tests.helpers import init_repo
from tests.ui_contract import CALLS, Ref, UiCall

# `default` is the echo model, so every execution runs offline.
FILES = {
    **SEED_FILES,
    "llmkit.yaml": "models:\n  default:\n    model: echo\n",
    "evals/hello/basic.yaml": "name: greets\nvars:\n  personality: cheerful\n  question: Hi?\n",
    # pages/prompts.vue shows the chat panel only for a chat prompt.
    "prompts/chatty.md": "---\nchat: true\n---\n<!-- role:system -->\nYou are {{ mood }}.\n",
}

# What llmkit answers today where the UI expects something else, one entry per call.
GAPS: dict[str, str] = {}

Context = dict[str, Any]


class UiReplay:
    """The app under replay and what the calls so far taught the UI (ids, keys, versions)."""

    def __init__(self, env: ApiEnv) -> None:
        self.env = env
        hello = env.ws.index.get_prompt("hello")
        chatty = env.ws.index.get_prompt("chatty")
        self.context: Context = {
            "prompt_id": hello.id,
            "prompt_key": hello.key,
            "chat_prompt_key": chatty.key,
        }


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiReplay]:
    root: Path = tmp_path_factory.mktemp("ui") / "repo"
    with running_api(init_repo(root, FILES).root) as env:
        yield UiReplay(env)


# -- reading an answer the way the UI does -------------------------------------------------


def js_parse_int(text: str) -> int | None:
    """JavaScript's parseInt on a string: the leading decimal digits, or None (NaN)."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else None


def log_id_of(ref: str) -> int | None:
    """The log id components/prompts/test.vue takes from a completion id."""
    parts = ref.split("-")
    return js_parse_int(parts[1]) if len(parts) > 1 else None


def _text_that(parse: Callable[[str], object]) -> Callable[[Any], bool]:
    """A check that a value is a string `parse` reads without a ValueError."""

    def check(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            parse(value)
        except ValueError:
            return False
        return True

    return check


TYPE_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "timestamp": _text_that(datetime.fromisoformat),
    "json-str": _text_that(json.loads),
    "log-ref": lambda v: isinstance(v, str) and (log_id_of(v) or 0) > 0,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}

MISSING = object()


def values_at(data: Any, path: str) -> list[tuple[str, Any]]:
    """Every value `path` names in `data` (`a.b`, `a[].b`, `[0].b`), with where it was found;
    MISSING where a member is absent or an array the path walks is empty."""
    found: list[tuple[str, Any]] = [("", data)]
    for step in re.findall(r"\[\]|\[\d+\]|[^.\[\]]+", path):
        following: list[tuple[str, Any]] = []
        for where, value in found:
            if value is MISSING:
                following.append((where, MISSING))
            elif step == "[]":
                items = value if isinstance(value, list) else []
                following += [(f"{where}[{i}]", item) for i, item in enumerate(items)]
                if not items:
                    following.append((f"{where}[]", MISSING))
            elif step.startswith("["):
                index = int(step[1:-1])
                ok = isinstance(value, list) and len(value) > index
                following.append((f"{where}{step}", value[index] if ok else MISSING))
            else:
                member = value.get(step, MISSING) if isinstance(value, dict) else MISSING
                following.append((f"{where}.{step}" if where else step, member))
        found = following
    return found


def problems(data: Any, reads: dict[str, str] | Any) -> list[str]:
    """Each field of `reads` that is absent from `data` or not of the JSON type named."""
    wrong = []
    for path, kind in reads.items():
        nullable = kind.endswith("?")
        check = TYPE_CHECKS[kind.rstrip("?")]
        for where, value in values_at(data, path):
            if value is MISSING:
                wrong.append(f"{where or path}: absent")
            elif not (value is None and nullable) and not check(value):
                wrong.append(f"{where}: {json.dumps(value)[:80]} is not {kind}")
    return wrong


def sse_chunks(response: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]


def finishing_chunk(response: httpx.Response) -> Any:
    """The JSON chunk carrying finish_reason, after checking the stream ends with [DONE] and
    every other message is JSON, as the UI's SSE handlers parse them."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    chunks = sse_chunks(response)
    assert chunks and chunks[-1] == "[DONE]", f"no final [DONE]: {chunks[-3:]}"
    parsed = [json.loads(chunk) for chunk in chunks[:-1]]
    finishing = [c for c in parsed if any(ch.get("finish_reason") for ch in c["choices"])]
    assert finishing, f"no chunk with finish_reason: {chunks}"
    return finishing[-1]


# -- the replay ------------------------------------------------------------------------------


def resolve(value: Any, context: Context) -> Any:
    if isinstance(value, Ref):
        if value.name not in context:
            pytest.fail(f"the UI learns {value.name!r} from an earlier call, which failed")
        return context[value.name]
    if isinstance(value, dict):
        return {k: resolve(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context) for v in value]
    return value


def url_of(call: UiCall, context: Context) -> str:
    names = re.findall(r"\{(\w+)\}", call.path)
    return call.path.format(**{name: resolve(Ref(name), context) for name in names})


def send(replay: UiReplay, call: UiCall) -> httpx.Response:
    body = resolve(call.body, replay.context)
    kwargs: dict[str, Any] = {"params": dict(call.query)}
    if body is not None:
        kwargs["json"] = body
    return replay.env.request(call.method, url_of(call, replay.context), **kwargs)


def learn(replay: UiReplay, call: UiCall, data: Any) -> None:
    """Keep what later calls need, the way the UI keeps it."""
    for name, path in call.captures.items():
        (_, value), *_ = values_at(data, path)
        if value is not MISSING:
            replay.context[name] = value
    ref = replay.context.get("log_ref")
    if isinstance(ref, str) and log_id_of(ref):
        replay.context["log_id"] = log_id_of(ref)


def check_log_refs(replay: UiReplay, call: UiCall, data: Any) -> list[str]:
    """A log-ref must name a log the UI can open: GET /v1/ui/logs/{n} answers that entry."""
    wrong = []
    for path, kind in call.reads.items():
        if kind != "log-ref":
            continue
        for where, value in values_at(data, path):
            log_id = log_id_of(value) if isinstance(value, str) else None
            if not log_id:
                continue
            opened = replay.env.get(f"/v1/ui/logs/{log_id}")
            if opened.status_code != 200 or opened.json().get("id") != log_id:
                wrong.append(f"{where}: log {log_id} does not open: {opened.text[:120]}")
    return wrong


def contract_cases() -> list[Any]:
    cases = []
    for call in CALLS:
        marks = []
        if call.name in GAPS:
            marks.append(pytest.mark.xfail(strict=True, reason=GAPS[call.name]))
        cases.append(pytest.param(call, id=call.name.replace(" ", "-"), marks=marks))
    return cases


def test_the_catalogue_names_each_call_once_and_every_gap_is_a_call() -> None:
    names = [call.name for call in CALLS]
    assert len(names) == len(set(names))
    assert set(GAPS) <= set(names)
    routes = {(call.method, call.path) for call in CALLS}
    assert len(routes) == len(CALLS)


@pytest.mark.parametrize("call", contract_cases())
def test_the_ui_call_gets_every_field_it_reads(replay: UiReplay, call: UiCall) -> None:
    response = send(replay, call)
    assert response.status_code < 300, f"{response.status_code}: {response.text[:300]}"
    if call.stream:
        data = finishing_chunk(response)
    elif call.reads or call.many:
        data = response.json()
    else:
        return  # the UI reads nothing but success from this answer
    learn(replay, call, data)
    if call.many:
        assert isinstance(data, list), f"not an array: {json.dumps(data)[:200]}"
        assert data, "an empty array: nothing to check the fields of"
        wrong = [f"[{i}].{p}" for i, item in enumerate(data) for p in problems(item, call.reads)]
    else:
        wrong = problems(data, call.reads)
    wrong += check_log_refs(replay, call, data)
    assert not wrong, "\n".join(wrong)


def test_the_field_check_names_each_way_an_answer_can_differ() -> None:
    reads = {"id": "int", "when": "timestamp", "body": "json-str?", "items[].n": "number"}
    good = {"id": 3, "when": "2026-01-02T03:04:05.678Z", "body": None, "items": [{"n": 1.5}]}
    assert problems(good, reads) == []
    bad = {"id": "3fa9c1e", "when": "yesterday", "body": "{not json", "items": []}
    assert problems(bad, reads) == [
        'id: "3fa9c1e" is not int',
        'when: "yesterday" is not timestamp',
        'body: "{not json" is not json-str?',
        "items[]: absent",
    ]
    assert problems({}, {"id": "int?"}) == ["id: absent"]
    assert log_id_of("chatcmpl-42") == 42
    assert log_id_of("chatcmpl-echo-32f8") is None

"""What reading a chat-completions body costs, per way of reading it. Run by hand:

    python bench/request_body.py            # 5 rounds of 20,000 reads each

- `json.loads`: the body as the execution routes read it before they had a schema (the
  baseline; the fields were then checked by hand in Executor.prepare, as they still are);
- `TypeAdapter(TypedDict)`: llmkit's way (`deps.parse_body`): validated while parsed, to a dict;
- `BaseModel` + `model_dump`: the same schema as a pydantic model, dumped back to the dict the
  executor takes, to show what that way would cost.

Each figure is the median over rounds, interleaved, as a ratio to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from llmkit.api.deps import parse_body
from llmkit.api.schemas import ChatCompletionRequest

BODY = json.dumps(
    {
        "model": "support/triage",
        "variables": {"audience": "engineers", "ticket": "The export button does nothing."},
        "messages": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Now triage the ticket, please."},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
    }
).encode()


def as_model() -> type[BaseModel]:
    """ChatCompletionRequest's fields as a BaseModel (messages as loose dicts: kinder to it)."""
    hints = TypeAdapter(ChatCompletionRequest).json_schema()["properties"]
    fields: dict[str, Any] = {name: (Any, None) for name in hints}
    fields["model"] = (str, ...)
    config = ConfigDict(extra="forbid")
    return create_model("ChatCompletionModel", __config__=config, **fields)


def timed(read: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        read()
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    adapter = TypeAdapter(ChatCompletionRequest)
    model = as_model()
    ways: dict[str, Callable[[], object]] = {
        "json.loads (baseline)": lambda: json.loads(BODY),
        "TypeAdapter(TypedDict).validate_json": lambda: parse_body(BODY, adapter),
        "BaseModel.model_validate_json + model_dump": (
            lambda: model.model_validate_json(BODY).model_dump(exclude_unset=True)
        ),
    }
    assert parse_body(BODY, adapter) == json.loads(BODY)
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for index in range(args.rounds):
        names = list(ways)
        names = names[index % len(names) :] + names[: index % len(names)]
        for name in names:
            samples[name].append(timed(ways[name], args.count))
    base = statistics.median(samples["json.loads (baseline)"])
    print(f"{len(BODY)}-byte body, median of {args.rounds} rounds of {args.count}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:45} {median:7.2f} us  x{median / base:.2f}")


if __name__ == "__main__":
    main()

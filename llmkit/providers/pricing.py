"""Prices from litellm's bundled price table, read as JSON so that pricing never imports litellm."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from typing import Any

from llmkit.providers.base import Usage

PRICE_FILE = "model_prices_and_context_window_backup.json"
FREE_MODELS = frozenset({"echo"})

_load_lock = threading.Lock()
_table: dict[str, dict[str, Any]] | None = None


def _price_table() -> dict[str, dict[str, Any]]:
    global _table
    if _table is None:
        with _load_lock:
            if _table is None:
                _table = _read_price_file()
    return _table


def preload() -> None:
    """Read the price table now (about 20 ms), so the first priced request does not wait."""
    _price_table()


def _read_price_file() -> dict[str, dict[str, Any]]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = os.path.join(os.path.dirname(spec.origin), PRICE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in table.items() if isinstance(v, dict)}


def _entry(model: str) -> dict[str, Any] | None:
    table = _price_table()
    entry = table.get(model)
    if entry is None and "/" in model:
        # "openai/gpt-4o-mini" is listed as "gpt-4o-mini"; "openrouter/x/y" as "openrouter/x/y".
        entry = table.get(model.split("/", 1)[1])
    return entry


def provider_in_price_table(model: str) -> str | None:
    entry = _price_table().get(model)
    provider = entry.get("litellm_provider") if entry else None
    return provider if isinstance(provider, str) else None


def cost_of(model: str, usage: Usage) -> float | None:
    """USD for the usage, or None when the model has no price."""
    if model.split("/", 1)[0] in FREE_MODELS:
        return 0.0
    entry = _entry(model)
    if entry is None:
        return None
    input_price = entry.get("input_cost_per_token")
    output_price = entry.get("output_cost_per_token")
    if not isinstance(input_price, (int, float)) or not isinstance(output_price, (int, float)):
        return None
    # Reasoning tokens are already counted in output tokens, as OpenAI reports them.
    return usage.input_tokens * input_price + usage.output_tokens * output_price


def features_of(model: str) -> tuple[bool, bool, int | None]:
    """(JSON output, tool calls, most output tokens) as litellm's table lists the model; the
    offline models do both, and a model the table does not list is said to do neither, since
    nothing vouches for it."""
    if model.split("/", 1)[0] in FREE_MODELS:
        return True, True, None
    entry = _entry(model) or {}
    limit = entry.get("max_output_tokens") or entry.get("max_tokens")
    return (
        bool(entry.get("supports_response_schema")),
        bool(entry.get("supports_function_calling")),
        limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None,
    )

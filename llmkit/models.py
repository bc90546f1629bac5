"""Model aliases from `llmkit.yaml`, and what each model needs to run.

```yaml
models:
  default:
    model: echo                     # any litellm model string
  fast:
    model: openai/gpt-4o-mini
    api_base: https://example.test/v1   # optional
    api_key_env: MY_OPENAI_KEY          # optional: env var holding the key
    temperature: 0.2                    # any other field: default request parameters
  local:
    model: openai/llama3
    api_base: http://localhost:8000/v1
    api_key_env: null                   # a server of one's own that needs no key
limits:                             # optional: budgets (see llmkit.budgets)
  render_cpu_ms: 1000
```
The file is re-read when it changes, so editing it needs no restart.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.budgets import DEFAULT_LIMITS, Limits, limits_from
from llmkit.errors import ConfigError
from llmkit.yamlfile import YamlProblem, load

ALIAS_FIELDS = {"model", "api_base", "api_key_env", "fallbacks", "timeout", "max_retries"}


@dataclass(frozen=True)
class ModelTarget:
    """What a prompt's `model:` resolves to."""

    name: str  # as written in the prompt (alias or model string)
    model: str  # litellm model string
    api_base: str | None = None
    api_key_env: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()
    timeout: float | None = None
    max_retries: int | None = None
    alias: bool = False
    keyless: bool = False  # `api_key_env: null`: calls send no key at all


class ModelRegistry:
    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._aliases: dict[str, ModelTarget] = {}
        self._limits = DEFAULT_LIMITS
        self._error: str | None = None

    def aliases(self) -> dict[str, ModelTarget]:
        self._refresh()
        if self._error:
            raise ConfigError(self._error)
        return self._aliases

    def limits(self) -> Limits:
        """The `limits:` section; the defaults while the file is missing or its limits are
        invalid (that error is raised by aliases() and reported by lint), so that a typo never
        lifts a budget and never stops the index."""
        self._refresh()
        return self._limits

    def resolve(self, name: str) -> ModelTarget:
        """An alias from llmkit.yaml, or a litellm model string as it is."""
        aliases = self.aliases()
        if name in aliases:
            return aliases[name]
        return ModelTarget(name=name, model=name)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.config_file)
            signature: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            if signature is None:
                self._aliases, self._limits, self._error = {}, DEFAULT_LIMITS, None
            else:
                self._aliases, self._limits, self._error = _load(self.config_file)
            self._signature = signature


def _load(path: Path) -> tuple[dict[str, ModelTarget], Limits, str | None]:
    """Aliases, limits and the first error; limits stand on their own, so that an error in the
    aliases leaves the configured budgets in force."""
    name = path.name
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, DEFAULT_LIMITS, f"{name}: cannot read: {exc}"
    try:
        data = load(text).data or {}
    except YamlProblem as problem:
        return {}, DEFAULT_LIMITS, problem.located(name)
    if not isinstance(data, dict):
        return {}, DEFAULT_LIMITS, f"{name}: expected a mapping with a 'models' key"
    try:
        limits = limits_from(data.get("limits"))
    except ValueError as exc:
        return {}, DEFAULT_LIMITS, f"{name}: {exc}"
    aliases, error = _load_aliases(name, data)
    return aliases, limits, error


def _load_aliases(name: str, data: dict[Any, Any]) -> tuple[dict[str, ModelTarget], str | None]:
    unknown = set(data) - {"models", "limits"}
    if unknown:
        return {}, f"{name}: unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}"
    models = data.get("models") or {}
    if not isinstance(models, dict):
        return {}, f"{name}: 'models' must map alias names to settings"
    aliases = {}
    for alias, spec in models.items():
        if isinstance(spec, str):
            spec = {"model": spec}
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("model"), str)
            or not spec["model"]
        ):
            return {}, f"{name}: alias {alias!r} needs a 'model' string"
        fallbacks = spec.get("fallbacks") or []
        if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
            return {}, f"{name}: alias {alias!r}: fallbacks must be a list of model strings"
        problem = _field_problem(spec)
        if problem:
            return {}, f"{name}: alias {alias!r}: {problem}"
        keyless = "api_key_env" in spec and spec["api_key_env"] is None
        if keyless and not spec.get("api_base"):
            # Without an api_base the call goes to the provider itself, which wants a key.
            return {}, (
                f"{name}: alias {alias!r}: api_key_env: null (no key) needs an api_base,"
                " the address of a server that takes calls without a key"
            )
        aliases[str(alias)] = ModelTarget(
            name=str(alias),
            model=spec["model"],
            api_base=spec.get("api_base"),
            api_key_env=spec.get("api_key_env"),
            params={k: v for k, v in spec.items() if k not in ALIAS_FIELDS},
            fallbacks=tuple(fallbacks),
            timeout=spec.get("timeout"),
            max_retries=spec.get("max_retries"),
            alias=True,
            keyless=keyless,
        )
    return aliases, None


def _field_problem(spec: dict[str, Any]) -> str | None:
    """Why a connection field has the wrong type; checked here, so that a typo in llmkit.yaml
    is a configuration error naming it, not a crash on every request."""
    for key in ("api_base", "api_key_env"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            return f"{key} must be a non-empty string, got {value!r}"
    timeout = spec.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        return f"timeout must be a positive number of seconds, got {timeout!r}"
    retries = spec.get("max_retries")
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        return f"max_retries must be a whole number of at least 0, got {retries!r}"
    return None


def describe_models(
    registry: ModelRegistry, prompt_models: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Aliases and the models prompts use, with provider and whether the key is set."""
    from llmkit.providers import key_env_of, key_is_set, provider_of

    rows = []
    seen = set()
    aliases = registry.aliases()
    names = list(aliases) + sorted(n for n in prompt_models if n not in aliases)
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        target = registry.resolve(name)
        env = None if target.keyless else target.api_key_env or key_env_of(target.model)
        rows.append(
            {
                "name": name,
                "alias": target.alias,
                "model": target.model,
                "provider": provider_of(target.model),
                "api_base": target.api_base,
                "key_env": env,
                "key_set": target.keyless or key_is_set(target.model, target.api_key_env),
                "prompts": sorted(prompt_models.get(name, [])),
            }
        )
    return rows


# What a prompt that leaves temperature or max_tokens to the model shows where LLMKit's UI needs
# a number: the alias's own setting, else these (OpenAI's default temperature; for max_tokens
# the model's own output limit from litellm's table, else this).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_MAX_TOKENS = 4096
ID_BITS = 48  # below JavaScript's 2**53, so the UI reads every id exactly


def model_id(name: str) -> int:
    """The integer id LLMKit's UI knows a model by: 48 bits of the SHA-256 of its name (an
    alias of llmkit.yaml or a model string as prompts write it). It depends on the name alone,
    so it survives restarts and never moves when another alias is added or removed."""
    digest = hashlib.sha256(f"model\n{name}".encode()).digest()
    return int.from_bytes(digest[: ID_BITS // 8], "big") or 1


def provider_id(provider: str, base_url: str) -> int:
    """LLMKit's provider is a name at a base URL; its id, like a model's, depends on those alone."""
    digest = hashlib.sha256(f"provider\n{provider}\n{base_url}".encode()).digest()
    return int.from_bytes(digest[: ID_BITS // 8], "big") or 1


def effective_settings(registry: ModelRegistry, name: str) -> tuple[float, int]:
    """(temperature, max_tokens) a call to model `name` runs with when the prompt leaves them
    unset, as numbers for LLMKit's UI; see DEFAULT_TEMPERATURE."""
    from llmkit.providers.pricing import features_of

    try:
        target = registry.resolve(name)
    except ConfigError:
        target = ModelTarget(name=name, model=name)
    temperature = target.params.get("temperature")
    max_tokens = target.params.get("max_tokens")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        temperature = DEFAULT_TEMPERATURE
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        max_tokens = features_of(target.model)[2] or DEFAULT_MAX_TOKENS
    return float(temperature), max_tokens


def provider_name_of(registry: ModelRegistry | None, name: str) -> str:
    """The provider that serves model `name` (an alias, without `registry` a model string)."""
    from llmkit.providers import provider_of

    try:
        return provider_of(registry.resolve(name).model if registry else name)
    except ConfigError:
        return provider_of(name)


def ui_models(registry: ModelRegistry, prompt_models: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The models as LLMKit's UI lists them (its `Model`: integer id, provider id, name and
    base URL, JSON and tool support), each with llmkit's own description beside: every alias
    of llmkit.yaml, then every other model string prompts use."""
    from llmkit.providers.pricing import features_of
    from llmkit.providers.registry import TRANSPORTS

    default_bases = {
        p.name: p.base_url for t in TRANSPORTS for p in t.providers if p.base_url is not None
    }
    rows = []
    owner: dict[int, str] = {}
    for row in describe_models(registry, prompt_models):
        name = row["name"]
        vid = model_id(name)
        if owner.setdefault(vid, name) != name:
            raise ConfigError(
                f"Models {owner[vid]!r} and {name!r} hash to one id; rename one alias"
            )
        base_url = row["api_base"] or default_bases.get(row["provider"]) or ""
        supports_json, supports_tools, _ = features_of(row["model"])
        rows.append(
            {
                "id": vid,
                "provider_id": provider_id(row["provider"], base_url),
                "name": name,
                "provider_name": row["provider"],
                "provider_base_url": base_url,
                "supports_json": supports_json,
                "supports_tools": supports_tools,
                **row,
            }
        )
    return rows


def model_for_id(
    registry: ModelRegistry, prompt_models: dict[str, list[str]], wanted: int
) -> str | None:
    """The model name (alias or model string) whose `model_id` is `wanted`, among those
    `ui_models` lists; None when there is none."""
    aliases = registry.aliases()
    for name in [*aliases, *sorted(prompt_models)]:
        if model_id(name) == wanted:
            return name
    return None

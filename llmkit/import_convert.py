"""What LLMKit rows become in a prompt repository: prompt files, eval case files, model strings
and model aliases. Pure translations, with no git and no database, so that a dry run and a real
import compute exactly the same files.

- A version's `system` and `user` columns become the system and user sections; its settings
  become frontmatter (`chat:` for is_chat, `type:` only when LLMKit's prompt_type differs from
  the one llmkit derives from the text).
- A model row and its provider become a litellm model string (`openai/gpt-4o`), or an alias in
  `llmkit.yaml` when the provider has a base URL of its own (a proxy, an Azure resource).
- An eval case's inputs become `vars` (system, or all sections), `user_vars` or `input`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import yaml

from llmkit.errors import LlmkitError
from llmkit.evals.case_json import case_from_dict
from llmkit.evals.case_yaml import serialize_case
from llmkit.evals.cases import EvalSpecError
from llmkit.import_source import ImportRefused, SourceEval, SourceModel, SourceVersion
from llmkit.promptfile import (
    PROMPT_TYPES,
    REASONING_EFFORTS,
    Message,
    PromptFile,
    parse,
    section_text,
    serialize,
)
from llmkit.render import check_templates

# The base URLs LLMKit seeds for each provider (gemini's as LLMKit spells it, and as Google
# does): a provider still on one of these needs no alias.
DEFAULT_BASES: dict[str, tuple[str, ...]] = {
    "openai": ("https://api.openai.com/v1", "https://api.openai.com"),
    "anthropic": ("https://api.anthropic.com/v1", "https://api.anthropic.com"),
    "gemini": (
        "https://generativelanguage.geminiapis.com/v1",
        "https://generativelanguage.googleapis.com/v1",
        "https://generativelanguage.googleapis.com/v1beta",
    ),
    "deepseek": ("https://api.deepseek.com/v1", "https://api.deepseek.com"),
    "openrouter": ("https://openrouter.ai/api/v1",),
}
# LLMKit's provider names that litellm knows by the same prefix.
KNOWN_PROVIDERS = ("openai", "anthropic", "gemini", "deepseek", "openrouter", "azure")


@dataclass(frozen=True)
class ModelTarget:
    """What a prompt's `model:` becomes: a litellm string, and the alias settings when one is
    needed (`alias` then holds the fields of its llmkit.yaml entry)."""

    model: str
    alias: dict[str, Any] | None = None
    note: str | None = None


def model_target(model: SourceModel) -> ModelTarget:
    provider = re.sub(r"[^a-z0-9_]+", "_", model.provider.strip().lower()) or "unknown"
    name = model.name.strip()
    base = (model.base_url or "").strip()
    if provider == "azure":
        return _azure_target(name, base)
    litellm = f"{provider}/{name}"
    note = None
    if provider not in KNOWN_PROVIDERS:
        note = f"LLMKit provider {model.provider!r} is not one llmkit knows; check {litellm!r}"
    if not base or _normal_url(base) in {_normal_url(u) for u in DEFAULT_BASES.get(provider, ())}:
        return ModelTarget(litellm, None, note)
    return ModelTarget(litellm, {"model": litellm, "api_base": base}, note)


def _azure_target(name: str, base: str) -> ModelTarget:
    if not base:
        return ModelTarget(
            f"azure/{name}",
            None,
            f"azure/{name}: LLMKit has no Azure endpoint for it; set AZURE_API_BASE",
        )
    parts = urlsplit(base)
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    if "/openai/deployments/" in path:
        path = ""  # Azure OpenAI: litellm takes the resource URL and builds the rest
    api_base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    # Azure AI model inference endpoints (services.ai.azure.com) are litellm's azure_ai.
    prefix = "azure_ai" if parts.netloc.endswith(".services.ai.azure.com") else "azure"
    spec: dict[str, Any] = {"model": f"{prefix}/{name}", "api_base": api_base}
    version = parse_qs(parts.query).get("api-version")
    if version:
        spec["api_version"] = version[0]
    return ModelTarget(spec["model"], spec)


def _normal_url(url: str) -> str:
    return url.strip().rstrip("/").lower()


def alias_name(provider: str, model: str) -> str:
    """A readable alias that no litellm model string looks like (no '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{provider}-{model}").strip("-.") or "llmkit-model"


class AliasFile:
    """llmkit.yaml with aliases added. Existing entries are never changed: an equal entry is
    reused, a different one under the wanted name makes the new alias take a numbered name.
    New entries are appended as text, so the author's comments and layout stay as they are."""

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.existing: dict[str, Any] = {}
        if text and text.strip():
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ImportRefused(
                    f"llmkit.yaml is not valid YAML ({exc}); fix it so that model aliases can"
                    " be added, then import again"
                ) from None
            if data is not None and not isinstance(data, dict):
                raise ImportRefused("llmkit.yaml must be a mapping with a 'models' key")
            models = (data or {}).get("models") or {}
            if not isinstance(models, dict):
                raise ImportRefused("llmkit.yaml: 'models' must map alias names to settings")
            self.data: dict[str, Any] = data or {}
            self.existing = dict(models)
        else:
            self.data = {}
        self.added: dict[str, dict[str, Any]] = {}

    def name_for(self, wanted: str, spec: dict[str, Any]) -> str:
        for name, entry in {**self.existing, **self.added}.items():
            if _entry(entry) == spec:
                return str(name)
        name, n = wanted, 2
        while name in self.existing or name in self.added:
            name, n = f"{wanted}-{n}", n + 1
        self.added[name] = dict(spec)
        return name

    def new_text(self) -> str:
        """The file with the added aliases; checked by reading it back."""
        expected = {**self.data, "models": {**self.existing, **self.added}}
        appended = self._appended()
        if appended is not None and yaml.safe_load(appended) == expected:
            return appended
        return str(yaml.safe_dump(expected, sort_keys=False, allow_unicode=True))

    def _appended(self) -> str | None:
        text = self.text or ""
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        start = next(
            (i for i, line in enumerate(lines) if re.match(r"models:\s*(#.*)?$", line)), None
        )
        if start is None:
            if any(line.strip() and not line.lstrip().startswith("#") for line in lines):
                return None  # other content and no block `models:`: let YAML write it
            lines.append("models:\n")
            start = len(lines) - 1
        end, indent = len(lines), None
        for i in range(start + 1, len(lines)):
            line = lines[i]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            width = len(line) - len(line.lstrip(" "))
            if width == 0:
                end = i
                break
            indent = width if indent is None else indent
        pad = " " * (indent or 2)
        block = yaml.safe_dump(self.added, sort_keys=False, allow_unicode=True, indent=2)
        new = [pad + line if line.strip() else line for line in block.splitlines(keepends=True)]
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1  # after the last entry, before blank lines that part sections
        return "".join(lines[:end] + new + lines[end:])


def _entry(entry: Any) -> dict[str, Any]:
    return {"model": entry} if isinstance(entry, str) else dict(entry or {})


# --- prompt files ---------------------------------------------------------------------------


@dataclass
class Converted:
    text: str
    notes: list[str] = field(default_factory=list)


def prompt_text(version: SourceVersion, key: str, model: str) -> Converted:
    """The prompt file of one LLMKit version. Settings llmkit cannot hold are left out with a
    note; text a prompt file cannot hold is refused (ImportRefused names the version)."""
    where = f"{key!r} version {version.number} (LLMKit prompt_version id {version.id})"
    notes: list[str] = []
    meta: dict[str, Any] = {"model": model}
    max_tokens = version.max_tokens
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1:
        meta["max_tokens"] = max_tokens
    elif max_tokens is not None:
        notes.append(f"{where}: max_tokens {max_tokens!r} left out (llmkit needs at least 1)")
    temperature = version.temperature
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        if 0 <= temperature <= 2:
            meta["temperature"] = temperature
        else:
            notes.append(f"{where}: temperature {temperature!r} left out (llmkit takes 0 to 2)")
    if version.json_mode:
        meta["json_mode"] = True
    schema = _json_schema(version.json_schema)
    if schema is not None:
        meta["json_schema"] = schema
    elif version.json_schema not in (None, "", "null"):
        notes.append(f"{where}: json_schema is not a JSON object; left out")
    if version.is_chat:
        meta["chat"] = True
    effort = (version.reasoning_effort or "").strip().lower()
    if effort in REASONING_EFFORTS:
        meta["reasoning_effort"] = effort
    elif effort:
        notes.append(f"{where}: reasoning_effort {version.reasoning_effort!r} left out")
    if version.tools:
        meta["tools"] = [dict(t) for t in version.tools]
    messages = [Message("system", _section(version.system))]
    user = _section(version.user)
    if user.strip():
        messages.append(Message("user", user))
    prompt = PromptFile(meta=meta, messages=messages)
    if version.prompt_type in PROMPT_TYPES and version.prompt_type != prompt.prompt_type:
        meta["type"] = version.prompt_type
    try:
        text = serialize(prompt)
        text.encode("utf-8")
        parsed = parse(text)
        if parsed != prompt:
            raise ImportRefused("it does not read back as the same prompt")
    except (LlmkitError, UnicodeError) as exc:
        detail = exc.message if isinstance(exc, LlmkitError) else "it is not valid UTF-8 text"
        raise ImportRefused(
            f"LLMKit prompt {where} cannot be written as a prompt file: {detail}. Fix that"
            " version's text in the LLMKit database, then import again; nothing was imported."
        ) from None
    for line, detail in check_templates(parsed):
        # Tera (LLMKit) and Jinja (llmkit) differ at the edges; history keeps such a version.
        notes.append(f"{where}, line {line}: {detail}; it cannot be rendered until fixed")
    return Converted(text, notes)


def _section(text: str) -> str:
    # A lone carriage return is an old line break; the file format stores lines with \n only.
    return section_text(text.replace("\r\n", "\n").replace("\r", "\n"))


def _json_schema(text: str | None) -> dict[str, Any] | None:
    """LLMKit's json_schema: the schema itself, or OpenAI's {name, schema, strict} wrapper."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("schema"), dict) and "name" in value:
        return dict(value["schema"])
    return value if isinstance(value, dict) and value else None


# --- eval cases -------------------------------------------------------------------------------


def eval_case_text(source: SourceEval, key: str, name: str, path: str) -> Converted:
    """An eval case file. The seed's `input_data` is one JSON object of variables for every
    section; the latest schema's system input is system variables and its user input is user
    variables (a JSON object) or the user message itself. Raises ImportRefused when the inputs
    cannot make a valid case (the caller skips that case with a note)."""
    fields: dict[str, Any] = {"name": name}
    notes: list[str] = []
    if source.input_data is not None:
        value = _json_value(source.input_data)
        if isinstance(value, dict):
            if value:
                fields["vars"] = value
        elif isinstance(value, str) and value.strip():
            fields["input"] = value
    system = _json_value(source.system_input) if source.system_input is not None else None
    if isinstance(system, dict):
        if system:
            fields["vars"] = system
    elif isinstance(system, str) and system.strip():
        notes.append(
            f"eval case {name!r} of {key!r}: its system input is not a JSON object; left out"
        )
    if source.user_input is not None:
        user = _json_value(source.user_input)
        if isinstance(user, dict):
            if user:
                fields["user_vars"] = user
        elif source.user_input.strip():
            fields["input"] = source.user_input
    try:
        case = case_from_dict(fields, prompt_key=key, file=path)
    except EvalSpecError as exc:
        raise ImportRefused(f"eval case {name!r} of {key!r} cannot be written: {exc.message}")
    return Converted(serialize_case(case), notes)


def _json_value(text: str | None) -> Any:
    """JSON text as a value (decoded twice when it was encoded twice, as LLMKit's UI allows);
    text that is not JSON stays text."""
    if text is None:
        return None
    value: Any = text
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except ValueError:
            break
    return value


def case_name(name: str, taken: set[str]) -> str:
    """A one-line case name not among `taken` (the prompt's existing cases)."""
    base = " ".join(name.split()) or "case"
    candidate, n = base, 2
    while candidate in taken:
        candidate = f"{base} (LLMKit {n})" if n > 2 else f"{base} (LLMKit)"
        n += 1
    return candidate

"""Settings: every path and default is resolved here, from flags, LLMKIT_* variables and defaults."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from llmkit.budgets import MAX_JSON_DEPTH
from llmkit.errors import ConfigError

ENV_PREFIX = "LLMKIT_"


def find_repo_root(start: Path) -> Path:
    """The git work tree that contains `start`."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=start,
            capture_output=True,
            text=True,
            check=True,
        )
    except (subprocess.CalledProcessError, FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"{start} is not inside a git repository (use --repo DIR)") from exc
    return Path(out.stdout.strip())


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    repo: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    watch: bool = True
    debounce_ms: int = 30
    max_body_bytes: int = 1024 * 1024
    max_body_depth: int = MAX_JSON_DEPTH
    log_batch_ms: int = 50
    request_timeout_s: float = 600.0

    @property
    def prompts_dir(self) -> Path:
        return self.repo / "prompts"

    @property
    def evals_dir(self) -> Path:
        return self.repo / "evals"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "llmkit.db"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "write.lock"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def config_file(self) -> Path:
        return self.repo / "llmkit.yaml"

    @classmethod
    def resolve(cls, repo: str | Path | None = None, **overrides: object) -> "Settings":
        """Flags (non-None overrides) win over LLMKIT_* variables, which win over defaults."""
        env = os.environ
        repo = repo or env.get(ENV_PREFIX + "REPO")
        root = Path(repo).resolve() if repo else find_repo_root(Path.cwd())
        if not root.is_dir():
            raise ConfigError(f"Repository directory not found: {root}")
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            if name in ("repo", "data_dir"):
                continue
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _coerce(name, raw, field.annotation)
        data_dir = env.get(ENV_PREFIX + "DATA_DIR")
        values["data_dir"] = Path(data_dir).resolve() if data_dir else root / ".llmkit"
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(repo=root, **values)


def _coerce(name: str, raw: str, annotation: object) -> object:
    try:
        if annotation is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {annotation}") from None
    return raw

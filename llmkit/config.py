"""Settings: every path and default is resolved here, from flags, LLMKIT_* variables and
defaults."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmkit.budgets import MAX_JSON_DEPTH
from llmkit.errors import ConfigError

ENV_PREFIX = "LLMKIT_"
# A prompt repository's folders (DESIGN section 1): fixed names, so that any checkout of one is
# served the same way; every module spells them through these.
PROMPTS_DIR = "prompts"
EVALS_DIR = "evals"


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
    # The run log: the writer's batch window (about what a kill -9 can lose), whether a call is
    # answered only once its row is committed (and how long that may wait before a 503), and
    # each text field's cap in bytes.
    log_batch_ms: int = 20
    log_durable: bool = False
    log_durable_wait_s: float = 10.0
    log_field_max_bytes: int = 1024 * 1024
    # Where the durable tables (keys, run log, evals) live: a PostgreSQL URL, shared by every
    # replica, or None for the SQLite file beside the index (the embedded default).
    database_url: str | None = None
    # Run-log rows held in memory while the store cannot take them; past this they are dropped
    # and counted (/healthz), so an outage costs bounded memory, never a blocked request.
    log_max_queued: int = Field(default=100_000, gt=0)
    request_timeout_s: float = 600.0
    # How long a git write waits for another git process to release .git/index.lock (then 503).
    git_lock_timeout_s: float = 3.0
    # A client must send its request head, and then its body, within this each: a slow sender
    # (slowloris) would hold a connection and a task without end.
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    # A streaming client that takes nothing for this long while data waits for it is dropped,
    # and its upstream call cancelled: a stalled reader holds an upstream connection.
    stream_write_timeout_s: float = Field(default=30.0, gt=0)
    # Calls in flight to one upstream (base URL) at once, and how long a call waits for a free
    # place before it is answered 503 upstream_pool_full.
    upstream_pool_size: int = Field(default=512, gt=0)
    upstream_acquire_timeout_s: float = Field(default=5.0, gt=0)
    # JSON mode holds a streamed answer whole to check it before sending; a larger one is a 502.
    json_buffer_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Browser sessions (POST /v1/ui/auth/login): a session unused for session_idle_s ends, and
    # every session ends session_absolute_s after sign-in, however busy.
    session_idle_s: float = Field(default=3600.0, gt=0)
    session_absolute_s: float = Field(default=43200.0, gt=0)
    # Sign-in attempts with a key, per client address, within login_window_s; more is a 429.
    login_attempts: int = Field(default=10, gt=0)
    login_window_s: float = Field(default=300.0, gt=0)
    # Comma-separated addresses or networks of reverse proxies whose X-Forwarded-Proto and
    # X-Forwarded-For are believed; none by default, since anyone can send those headers.
    trusted_proxies: str | None = None
    # Comma-separated origins (scheme://host[:port]) besides the server's own that may send
    # cookie-authenticated writes and sign in from a browser: a UI served from elsewhere.
    trusted_origins: str | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str | None) -> str | None:
        for item in _items(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value

    @field_validator("trusted_origins")
    @classmethod
    def _check_origins(cls, value: str | None) -> str | None:
        for item in _items(value):
            if origin_of(item) != item:
                raise ValueError(f"{item!r} is not an origin like https://ui.example.com:3000")
        return value

    @property
    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in _items(self.trusted_proxies)]

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(_items(self.trusted_origins))

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
    def resolve(cls, repo: str | Path | None = None, **overrides: object) -> Settings:
        """Flags (non-None overrides) win over LLMKIT_* variables, which win over defaults."""
        env = os.environ
        repo = repo or env.get(ENV_PREFIX + "REPO")
        root = Path(repo).resolve() if repo else find_repo_root(Path.cwd())
        if not root.is_dir():
            raise ConfigError(f"Repository directory not found: {root}")
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if name in ("repo", "data_dir"):
                continue
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _coerce(name, raw, field.annotation)
        data_dir = env.get(ENV_PREFIX + "DATA_DIR")
        values["data_dir"] = Path(data_dir).resolve() if data_dir else root / ".llmkit"
        values.update({k: v for k, v in overrides.items() if v is not None})
        url = values.get("database_url")
        if url is not None and not str(url).startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"{ENV_PREFIX}DATABASE_URL must be a postgresql://user@host/database URL, got"
                f" {str(url).split(':', 1)[0]!r}... (leave it unset for SQLite under .llmkit/)"
            )
        try:
            return cls(repo=root, **values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"Invalid settings: {problems}") from None


def _items(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL, lower-cased as browsers send it in `Origin`,
    or None when `url` is not one."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


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
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {annotation}"
        ) from None
    return raw

"""`llmkit serve` and `llmkit keys`."""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict
from pathlib import Path
from types import FrameType

import click

from llmkit.cli import handle_errors, json_option, main, open_workspace, print_json, repo_option


@main.command()
@repo_option
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1, or $LLMKIT_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 8000, or $LLMKIT_PORT).")
@click.option("--no-watch", is_flag=True, help="Do not watch files and refs for changes.")
@click.option("--log-level", default="info", type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@handle_errors
def serve(repo: Path | None, host: str | None, port: int | None, no_watch: bool, log_level: str) -> None:
    """Serve the HTTP API (and the watcher, so saved edits and git pulls are live)."""
    import uvicorn

    from llmkit.api.app import create_app
    from llmkit.api.protocol import http_protocol

    ws = open_workspace(repo, host=host, port=port, watch=False if no_watch else None)
    settings = ws.settings
    admin = ws.keys.ensure_admin_key(settings.admin_key_path)
    if admin:
        click.echo(f"Created an admin API key (shown once; also saved to {settings.admin_key_path}):", err=True)
        click.echo(admin)
    app = create_app(workspace=ws)
    click.echo(f"Serving {settings.repo} on http://{settings.host}:{settings.port}/v1", err=True)
    # uvicorn stops gracefully on SIGTERM, then raises the signal again under the handler that
    # was there before it; with the default handler the process would die with -15 after a
    # clean shutdown, so a service manager would report a failure.
    signal.signal(signal.SIGTERM, _exit_after_sigterm)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        http=http_protocol(settings.stream_write_timeout_s, settings.request_read_timeout_s),
    )


def _exit_after_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@repo_option
@click.argument("name")
@click.option("--admin", is_flag=True, help="Admin scope: every /v1/ui route. Default: run scope.")
@handle_errors
def keys_create(repo: Path | None, name: str, admin: bool) -> None:
    """Create a key and print it, alone on stdout; it is not shown again."""
    ws = open_workspace(repo)
    record, clear = ws.keys.create(name, "admin" if admin else "run")
    click.echo(f"Created key {record.id} ({record.scope}) {record.prefix}…", err=True)
    click.echo(clear)
    ws.close()


@keys.command("list")
@repo_option
@json_option
@handle_errors
def keys_list(repo: Path | None, as_json: bool) -> None:
    """Every key (never the key itself)."""
    ws = open_workspace(repo)
    records = ws.keys.list()
    ws.close()
    if as_json:
        print_json([asdict(r) for r in records])
        return
    for r in records:
        state = f"revoked {r.revoked_at}" if r.revoked_at else f"last used {r.last_used_at or 'never'}"
        click.echo(f"{r.id:>4}  {r.scope:<5}  {r.prefix}…  {r.name}  ({state})")


@keys.command("revoke")
@repo_option
@click.argument("key_id", type=int)
@handle_errors
def keys_revoke(repo: Path | None, key_id: int) -> None:
    """Revoke a key by id."""
    ws = open_workspace(repo)
    record = ws.keys.revoke(key_id)
    ws.close()
    click.echo(f"Revoked key {record.id} ({record.name})", err=True)
    sys.exit(0)

"""`llmkit keys create`, `keys list` and `keys revoke`: the API keys of the HTTP API; and
`llmkit sessions list` and `sessions revoke`: the browser sessions signed in with them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llmkit.cli_options import handle_errors, json_option, open_workspace, print_json, repo_option

if TYPE_CHECKING:
    from llmkit.sessions import SessionStore
    from llmkit.workspace import Workspace


@click.group()
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
@click.option(
    "--include-revoked", is_flag=True, help="Also the revoked keys (the web UI's deleted keys)."
)
@handle_errors
def keys_list(repo: Path | None, as_json: bool, include_revoked: bool) -> None:
    """The keys that work (never the key itself), as the web UI lists them."""
    ws = open_workspace(repo)
    records = ws.keys.list(include_revoked=include_revoked)
    revoked = 0 if include_revoked else ws.keys.count() - len(records)
    ws.close()
    if as_json:
        print_json([asdict(r) for r in records])
        return
    if revoked:
        click.echo(f"{revoked} revoked key(s) not shown: --include-revoked shows them.", err=True)
    if not records:
        if not revoked:
            click.echo(
                "No API keys yet: `llmkit keys create NAME`, or start `llmkit serve`.", err=True
            )
        return
    rows = [
        (
            str(r.id),
            r.scope,
            f"{r.prefix}…",
            r.name,
            f"revoked {r.revoked_at}" if r.revoked_at else "active",
            r.last_used_at or "never",
        )
        for r in records
    ]
    _print_table(("ID", "SCOPE", "PREFIX", "NAME", "STATE", "LAST USED"), rows)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, the first (an id) right-aligned, the last as is."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [row[0].rjust(widths[0])]
        cells += [cell.ljust(width) for cell, width in zip(row[1:-1], widths[1:])]
        click.echo("  ".join([*cells, row[-1]]))


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


def _session_store(ws: Workspace) -> SessionStore:
    from llmkit.sessions import SessionStore

    settings = ws.settings
    return SessionStore(
        ws.durable, idle_s=settings.session_idle_s, absolute_s=settings.session_absolute_s
    )


@click.group()
def sessions() -> None:
    """List and end browser sessions (signed in with POST /v1/ui/auth/login)."""


@sessions.command("list")
@repo_option
@json_option
@handle_errors
def sessions_list(repo: Path | None, as_json: bool) -> None:
    """Every live session (never its token)."""
    ws = open_workspace(repo)
    records = _session_store(ws).list()
    ws.close()
    if as_json:
        print_json([asdict(r) for r in records])
        return
    if not records:
        click.echo("No one is signed in.", err=True)
        return
    rows = [
        (str(r.id), f"{r.key_prefix}… {r.key_name}", r.client or "-", r.created_at, r.expires_at)
        for r in records
    ]
    _print_table(("ID", "KEY", "CLIENT", "SIGNED IN", "EXPIRES"), rows)


@sessions.command("revoke")
@repo_option
@click.argument("session_id", type=int)
@handle_errors
def sessions_revoke(repo: Path | None, session_id: int) -> None:
    """End a session by id; its next request is refused."""
    ws = open_workspace(repo)
    record = _session_store(ws).revoke(session_id)
    ws.close()
    click.echo(f"Ended session {record.id} (key {record.key_prefix}… {record.key_name})", err=True)

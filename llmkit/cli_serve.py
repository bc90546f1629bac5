"""`llmkit serve`: the HTTP API, with the watcher."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from llmkit.cli_options import handle_errors, open_workspace, repo_option


@click.command()
@repo_option
@click.option(
    "--host", default=None, help="Interface to bind (default 127.0.0.1, or $LLMKIT_HOST)."
)
@click.option("--port", type=int, default=None, help="Port (default 8000, or $LLMKIT_PORT).")
@click.option("--no-watch", is_flag=True, help="Do not watch files and refs for changes.")
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@handle_errors
def serve(
    repo: Path | None, host: str | None, port: int | None, no_watch: bool, log_level: str
) -> None:
    """Serve the HTTP API (and the watcher, so saved edits and git pulls are live)."""
    import uvicorn

    from llmkit.api.app import create_app
    from llmkit.api.protocol import http_protocol

    ws = open_workspace(repo, host=host, port=port, watch=False if no_watch else None)
    settings = ws.settings
    admin = ws.keys.ensure_admin_key(settings.admin_key_path)
    if admin:
        click.echo(
            f"Created an admin API key (shown once; also saved to {settings.admin_key_path}):",
            err=True,
        )
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
        # uvicorn would believe X-Forwarded-Proto/-For from 127.0.0.1 (any local process);
        # llmkit decides which proxies to believe itself (LLMKIT_TRUSTED_PROXIES, none by default).
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        http=http_protocol(settings.stream_write_timeout_s, settings.request_read_timeout_s),
    )


def _exit_after_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)

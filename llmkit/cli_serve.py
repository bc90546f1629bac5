"""`llmkit serve`: the HTTP API, with the watcher."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from llmkit.cli_options import handle_errors, open_workspace, repo_option

# Bounds of --fetch-interval, here rather than imported from llmkit.refserve: `llmkit --help`
# imports no git code (tests/test_serve_ref.py checks they agree).
FETCH_INTERVAL_DEFAULT_S = 30.0
FETCH_INTERVAL_MIN_S = 1.0
FETCH_INTERVAL_MAX_S = 3600.0


@click.command()
@repo_option
@click.option(
    "--host", default=None, help="Interface to bind (default 127.0.0.1, or $LLMKIT_HOST)."
)
@click.option("--port", type=int, default=None, help="Port (default 8000, or $LLMKIT_PORT).")
@click.option("--no-watch", is_flag=True, help="Do not watch files and refs for changes.")
@click.option(
    "--ref",
    default=None,
    metavar="REF",
    help="Serve only what is committed at this branch or tag, never the working tree; follow it"
    " as it moves (production).",
)
@click.option(
    "--remote",
    default=None,
    metavar="NAME",
    help="With --ref: fetch REF from this remote every --fetch-interval and on a push webhook,"
    " and serve the fetched commit.",
)
@click.option(
    "--fetch-interval",
    type=click.FloatRange(FETCH_INTERVAL_MIN_S, FETCH_INTERVAL_MAX_S),
    default=None,
    metavar="SECONDS",
    help=f"With --remote: seconds between fetches ({FETCH_INTERVAL_MIN_S:g} to"
    f" {FETCH_INTERVAL_MAX_S:g}, default {FETCH_INTERVAL_DEFAULT_S:g}).",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@handle_errors
def serve(
    repo: Path | None,
    host: str | None,
    port: int | None,
    no_watch: bool,
    ref: str | None,
    remote: str | None,
    fetch_interval: float | None,
    log_level: str,
) -> None:
    """Serve the HTTP API (and the watcher, so saved edits and git pulls are live). With --ref,
    serve what is committed at REF instead, and follow it."""
    if remote is not None and ref is None:
        raise click.UsageError("--remote needs --ref (the branch to fetch and serve)")
    if fetch_interval is not None and remote is None:
        raise click.UsageError("--fetch-interval needs --remote")
    import uvicorn

    from llmkit.api.app import create_app
    from llmkit.api.protocol import http_protocol

    target = None
    if ref is not None:
        from llmkit.refserve import RefTarget

        target = RefTarget(ref, remote, fetch_interval or FETCH_INTERVAL_DEFAULT_S)
    ws = open_workspace(repo, ref=target, host=host, port=port, watch=False if no_watch else None)
    if target is not None:
        from llmkit.refserve import RefStore

        assert isinstance(ws.store, RefStore)
        ws.store.require()  # a ref that is not there is a one-line error, before serving starts
    settings = ws.settings
    admin = ws.keys.ensure_admin_key(settings.admin_key_path)
    if admin:
        click.echo(
            f"Created an admin API key (shown once; also saved to {settings.admin_key_path}):",
            err=True,
        )
        click.echo(admin)
    app = create_app(workspace=ws)
    what = f"{ref} of {settings.repo}" if ref else str(settings.repo)
    click.echo(f"Serving {what} on http://{settings.host}:{settings.port}/v1", err=True)
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

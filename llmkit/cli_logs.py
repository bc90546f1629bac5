"""`llmkit logs`: the newest provider calls from the run log; `llmkit logs show TRACE`: one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from llmkit.cli_options import handle_errors, json_option, open_workspace, print_json, repo_option


@click.group(invoke_without_command=True)
@repo_option
@click.option("--prompt", "prompt_key", help="Only calls of this prompt key.")
@click.option(
    "--status", type=click.Choice(["ok", "error", "cancelled"]), help="Only calls with this status."
)
@click.option(
    "-n", "limit", type=int, default=20, show_default=True, help="How many, newest first."
)
@json_option
@handle_errors
@click.pass_context
def logs(
    ctx: click.Context,
    repo: Path | None,
    prompt_key: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The newest provider calls from the run log; `logs show TRACE` prints one in full."""
    if ctx.invoked_subcommand is not None:
        return
    from llmkit.runlog_entries import version_label
    from llmkit.workspace import Workspace

    ws = Workspace.open(str(repo) if repo else None)
    try:
        rows = ws.runlog.list(
            page=1, page_size=max(1, min(limit, 500)), prompt=prompt_key, status=status
        )
    finally:
        ws.close()
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "time", "trace", "prompt", "ver", "model", "status", "ms", "tokens in/out", "cost"
    )
    for row in rows:
        cost = row.get("cost")
        table.add_row(
            row["created_at"][:19].replace("T", " "),
            row["trace_id"][:8],
            row["prompt_key"],
            version_label(row),
            row["model"],
            row["status"] if row["status"] == "ok" else f"[red]{row['status']}[/red]",
            f"{row['latency_ms']:.0f}" if row.get("latency_ms") is not None else "",
            f"{row.get('input_tokens') or 0}/{row.get('output_tokens') or 0}",
            f"${cost:.6f}" if cost else "",
        )
    Console().print(table)


@logs.command("show")
@repo_option
@click.argument("trace")
@json_option
@handle_errors
def logs_show(repo: Path | None, trace: str, as_json: bool) -> None:
    """One provider call in full, by trace id or a unique prefix of it (as `logs` shows)."""
    ws = open_workspace(repo)
    try:
        row = ws.runlog.find(trace)
    finally:
        ws.close()
    if as_json:
        print_json(row)
        return
    for name, value in row.items():
        if name in ("request", "response"):
            continue
        if value in (None, [], ""):
            continue
        click.echo(f"{name + ':':<18}{value}")
    for name in ("request", "response"):
        click.echo(f"{name}:")
        value = row.get(name)
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        click.echo("\n".join("  " + line for line in text.splitlines()))

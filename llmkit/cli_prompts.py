"""`llmkit history`, `show`, `diff` and `render`: one prompt, its versions and what it
renders to."""

from __future__ import annotations

from pathlib import Path

import click

from llmkit.cli_options import (
    console,
    handle_errors,
    json_option,
    parse_vars,
    print_json,
    repo_option,
    split_ref,
    synced_workspace,
    with_vars,
)
from llmkit.errors import LlmkitError


@click.command()
@repo_option
@click.argument("key")
@click.option("--patch", "-p", is_flag=True, help="Show each version's diff.")
@json_option
@handle_errors
def history(repo: Path | None, key: str, patch: bool, as_json: bool) -> None:
    """The versions of a prompt, oldest first."""
    from llmkit.history import history_rows

    rows = history_rows(synced_workspace(repo).index, key)
    if as_json:
        print_json(rows)
        return
    out = console()
    for row in rows:
        sha = (row["sha"] or "draft")[:10]
        first_line = str(row["message"]).splitlines()[0] if row["message"] else ""
        line = (
            f"[bold]{row['number']:>3}[/bold] [yellow]{sha:<10}[/yellow]"
            f" {row['date'] or '':<20} {row['author'] or '':<20} {first_line}"
        )
        out.print(line, highlight=False, soft_wrap=True)
        if patch:
            out.print(row["diff"], highlight=False, markup=False)


@click.command()
@repo_option
@click.argument("spec", metavar="KEY[@VERSION]")
@json_option
@handle_errors
def show(repo: Path | None, spec: str, as_json: bool) -> None:
    """Print a prompt file at a version (number, sha, branch or tag); default: what is served."""
    from llmkit.prompt_views import prompt_fields, version_fields

    ws = synced_workspace(repo)
    key, version_spec = split_ref(spec)
    version = ws.index.version(key, version_spec)
    if as_json:
        prompt = ws.index.get_prompt(key)
        print_json({**prompt_fields(prompt), **version_fields(version), "content": version.content})
        return
    if version.content is None:
        raise LlmkitError(f"{version.path}: {version.error}")
    click.echo(version.content, nl=False)


@click.command()
@repo_option
@click.argument("key")
@click.argument("old")
@click.argument("new", required=False)
@handle_errors
def diff(repo: Path | None, key: str, old: str, new: str | None) -> None:
    """Unified diff of a prompt between two versions (NEW defaults to what is served)."""
    ws = synced_workspace(repo)
    text = ws.index.diff(key, old, new)
    if not text:
        # An empty diff is an answer too; on stderr, so `llmkit diff ... | git apply` still works.
        served = f"{key}@{new}" if new is not None else "what is served"
        click.echo(f"No changes between {key}@{old} and {served}", err=True)
        return
    click.echo(text, nl=False)


@click.command()
@repo_option
@click.argument("spec", metavar="KEY[@VERSION]")
@with_vars
@json_option
@handle_errors
def render(
    repo: Path | None, spec: str, var_pairs: tuple[str, ...], vars_json: Path | None, as_json: bool
) -> None:
    """Print the messages a prompt renders to with the given variables."""
    from llmkit.render import render_messages

    ws = synced_workspace(repo)
    key, version_spec = split_ref(spec)
    version = ws.index.version(key, version_spec)
    messages = render_messages(
        version.prompt(),
        parse_vars(var_pairs, vars_json),
        limits=ws.models.limits(),
        path=version.path,
    )
    if as_json:
        print_json(messages)
        return
    out = console()
    for message in messages:
        out.rule(f"[bold]{message['role']}[/bold]", align="left")
        out.print(message["content"], markup=False, highlight=False)

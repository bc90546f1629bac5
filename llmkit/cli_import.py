"""`llmkit import-llmkit`: bring an LLMKit database into the prompt repository."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llmkit.cli_options import handle_errors, json_option, print_json, progress_bar, repo_option

if TYPE_CHECKING:
    from llmkit.import_history import Summary


@click.command("import-llmkit")
@click.argument("database", type=click.Path(path_type=Path))
@repo_option
@click.option("--dry-run", is_flag=True, help="Print what would be imported; change nothing.")
@json_option
@handle_errors
def import_llmkit(database: Path, repo: Path | None, dry_run: bool, as_json: bool) -> None:
    """Import LLMKit's DATABASE (llmkit.db): versions as commits, eval cases as files, eval
    runs, scores and logs as rows. Running it again imports only what is new."""
    from llmkit.config import Settings
    from llmkit.importer import import_llmkit as run_import

    settings = Settings.resolve(str(repo) if repo else None)
    progress, finish = _progress(quiet=as_json)
    try:
        summary = run_import(settings, database, dry_run=dry_run, progress=progress)
    finally:
        finish()
    if as_json:
        print_json(summary.as_dict())
    else:
        print_summary(summary)


def _progress(quiet: bool) -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A rich progress bar on a terminal; a plain line per finished phase otherwise."""
    if quiet:
        return (lambda phase, done, total: None), (lambda: None)
    if sys.stderr.isatty():
        bar = progress_bar()
        task = bar.add_task("Importing", total=None)
        bar.start()

        def step(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total or None)

        return step, bar.stop

    def line(phase: str, done: int, total: int) -> None:
        if total and done == total:
            click.echo(f"{phase}: {done}/{total}", err=True)

    return line, (lambda: None)


def print_summary(summary: Summary) -> None:
    where = f"{summary.source} (LLMKit schema {summary.schema})"
    if summary.dry_run:
        click.echo(f"Dry run: nothing was changed. Importing {where} would add:")
    elif summary.changed:
        click.echo(f"Imported {where}:")
    else:
        click.echo(f"Nothing new to import from {where}; it is all imported already.")
    if summary.dry_run or summary.changed:
        prompts = ", ".join(summary.prompts)
        click.echo(f"  prompts      {len(summary.prompts)}" + (f" ({prompts})" if prompts else ""))
        restored = f" (restored: {', '.join(summary.restores)})" if summary.restores else ""
        click.echo(f"  versions     {summary.versions}{restored}")
        click.echo(f"  eval cases   {summary.eval_cases}")
        click.echo(
            f"  eval runs    {summary.eval_runs} ({summary.eval_results} results,"
            f" {summary.scores} human scores)"
        )
        click.echo(f"  logs         {summary.logs}")
        for name, spec in summary.aliases.items():
            base = f" at {spec['api_base']}" if spec.get("api_base") else ""
            click.echo(f"  alias        {name} -> {spec['model']}{base} (llmkit.yaml)")
        if summary.commits:
            click.echo(
                f"  commits      {len(summary.commits)}, ending at {summary.commits[-1][:12]}"
            )
    if summary.keys:
        click.echo(
            "API keys cannot be carried over (LLMKit keeps only their hashes); re-create these"
            " with `llmkit keys create NAME`:"
        )
        for key in summary.keys:
            click.echo(f"  - {key['name']} (created {key['created_at']})")
    if summary.notes:
        click.echo("Notes:")
        for note in summary.notes:
            click.echo(f"  - {note}")

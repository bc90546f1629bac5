"""`llmkit init`, `llmkit index` and `llmkit lint`: the prompt repository as a whole."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llmkit.cli_options import (
    console,
    handle_errors,
    json_option,
    open_workspace,
    print_json,
    repo_option,
)
from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    from llmkit.index import SyncReport
    from llmkit.workspace import Workspace


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@handle_errors
def init(directory: Path) -> None:
    """Scaffold a prompt repository in DIRECTORY (prompts/, evals/, llmkit.yaml, a first commit)."""
    from llmkit.scaffold import init_repository

    created = init_repository(directory)
    for path in created:
        click.echo(f"created {path}")
    click.echo(f"Initialized a prompt repository in {directory.resolve()}")


@click.command()
@repo_option
@click.option("--rebuild", is_flag=True, help="Drop the index and rebuild it from git.")
@json_option
@handle_errors
def index(repo: Path | None, rebuild: bool, as_json: bool) -> None:
    """Bring the index up to date with the repository (or rebuild it)."""
    ws = open_workspace(repo)
    if rebuild:
        report = _rebuild_with_progress(ws, quiet=as_json)
    else:
        report = ws.index.sync()
    prompts = ws.index.list_prompts()
    if as_json:
        print_json(
            {
                "rebuilt": report.rebuilt,
                "commits": report.new_commits,
                "changed": sorted(report.changed),
                "prompts": [{"id": p.id, "key": p.key, "version": p.version.number if p.version else None, "draft": bool(p.version and p.version.draft)} for p in prompts],
            }
        )
        return
    from rich.table import Table

    table = Table("id", "key", "version", "model", "type", title=f"{len(prompts)} prompts")
    for p in prompts:
        v = p.version
        model = kind = ""
        if v is not None:
            try:
                parsed = v.prompt()
                model, kind = parsed.model, parsed.prompt_type
            except LlmkitError as exc:
                model, kind = "[red]error[/red]", exc.message[:60]
        number = "" if v is None else (f"{v.number} (draft)" if v.draft else str(v.number))
        table.add_row(str(p.id), p.key, number, model, kind)
    console().print(table)


def _rebuild_with_progress(ws: Workspace, quiet: bool) -> SyncReport:
    if quiet or not sys.stderr.isatty():
        return ws.index.rebuild()
    from rich.progress import Progress

    with Progress(console=console()) as progress:
        task = progress.add_task("Rebuilding index", total=None)

        def step(phase: str, done: int, total: int) -> None:
            progress.update(task, description=f"Rebuilding index: {phase}", completed=done, total=total or None)

        return ws.index.rebuild(progress=step)


@click.command()
@repo_option
@click.option("--format", "fmt", type=click.Choice(["text", "github"]), default="text", help="github: workflow annotations.")
@json_option
@handle_errors
def lint(repo: Path | None, fmt: str, as_json: bool) -> None:
    """Check every prompt and eval file; print problems as path:line: message. Exit 1 on errors."""
    from llmkit.config import Settings
    from llmkit.lint import lint_repo

    settings = Settings.resolve(str(repo) if repo else None)
    problems = lint_repo(settings.repo)
    if as_json:
        print_json([p.__dict__ for p in problems])
    else:
        for problem in problems:
            click.echo(problem.github() if fmt == "github" else str(problem))
    errors = sum(1 for p in problems if p.severity == "error")
    if not as_json:
        click.echo(f"{errors} error(s), {len(problems) - errors} warning(s)", err=True)
    sys.exit(1 if errors else 0)

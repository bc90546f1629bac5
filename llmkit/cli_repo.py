"""`llmkit init`, `llmkit index` and `llmkit lint`: the prompt repository as a whole."""

from __future__ import annotations

import sys
import time
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

if TYPE_CHECKING:
    from llmkit.index_sync import SyncReport
    from llmkit.workspace import Workspace


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option(
    "--llmkit-repo",
    "llmkit_repo",
    default=None,
    metavar="OWNER/NAME",
    help="GitHub repository of llmkit that the workflow and the hook are pinned to.",
)
@handle_errors
def init(directory: Path, llmkit_repo: str | None) -> None:
    """Set up a prompt repository in DIRECTORY, new or existing: llmkit.yaml, a first prompt,
    the eval workflow, the pre-commit hook and a page on the workflow. Existing files are kept."""
    from llmkit.scaffold import SOURCE_REPOSITORY, init_repository, release_tag

    report = init_repository(directory, llmkit_repo or SOURCE_REPOSITORY)
    for path in report.created:
        click.echo(f"created {path}")
    for path, reason in report.skipped:
        click.echo(f"skipped {path} ({reason})")
    for path in report.appended:
        click.echo(f"appended .llmkit/ to {path} (not committed)")
    where = directory.resolve()
    if report.committed:
        click.echo(
            f"Committed {len(report.created)} file(s) in {where}; llmkit pinned to {release_tag()}."
        )
    else:
        click.echo(f"Nothing to create in {where}.")
    if report.placeholder:
        click.echo(
            f"Replace {SOURCE_REPOSITORY} in the created files with the GitHub repository "
            "of llmkit (or run init with --llmkit-repo OWNER/NAME on a new repository)."
        )


@click.command()
@repo_option
@click.option("--rebuild", is_flag=True, help="Drop the index and rebuild it from git.")
@json_option
@handle_errors
def index(repo: Path | None, rebuild: bool, as_json: bool) -> None:
    """Bring the index up to date with the repository (or rebuild it), and say in one line
    what it holds (`llmkit list` shows the prompts)."""
    started = time.monotonic()
    ws = open_workspace(repo)
    if rebuild:
        report = _rebuild_with_progress(ws, quiet=as_json)
    else:
        report = ws.index.sync()
    seconds = time.monotonic() - started
    prompts, versions, commits = ws.index.counts()
    if as_json:
        print_json(
            {
                "rebuilt": report.rebuilt,
                "commits": report.new_commits,
                "changed": sorted(report.changed),
                "counts": {"prompts": prompts, "versions": versions, "commits": commits},
                "seconds": round(seconds, 3),
                "prompts": [
                    {
                        "id": p.id,
                        "key": p.key,
                        "version": p.version.number if p.version else None,
                        "draft": bool(p.version and p.version.draft),
                    }
                    for p in ws.index.list_prompts()
                ],
            }
        )
        return
    done = "Rebuilt the index" if report.rebuilt else "Index up to date"
    new = f" ({report.new_commits:,} new)" if report.new_commits else ""
    click.echo(
        f"{done}: {prompts:,} prompts, {versions:,} versions, {commits:,} commits{new}"
        f" in {seconds:.2f} s"
    )


def _rebuild_with_progress(ws: Workspace, quiet: bool) -> SyncReport:
    if quiet or not sys.stderr.isatty():
        return ws.index.rebuild()
    from rich.progress import Progress

    with Progress(console=console()) as progress:
        task = progress.add_task("Rebuilding index", total=None)

        def step(phase: str, done: int, total: int) -> None:
            progress.update(
                task, description=f"Rebuilding index: {phase}", completed=done, total=total or None
            )

        return ws.index.rebuild(progress=step)


@click.command()
@repo_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "github"]),
    default="text",
    help="github: workflow annotations.",
)
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

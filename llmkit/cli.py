"""The `llmkit` command: a thin front that parses flags, calls the core, and prints.

Imports of anything heavy happen inside the commands that need them, so `llmkit --help` and
`llmkit lint` stay fast and never load litellm or fastapi.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llmkit import __version__
from llmkit.errors import ConfigError, LlmkitError

if TYPE_CHECKING:
    from llmkit.workspace import Workspace

repo_option = click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prompt repository (default: the git root of the current directory, or $LLMKIT_REPO).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn LlmkitError into a one-line message: exit 2 for configuration, 1 otherwise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(2)
        except LlmkitError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(1)

    return wrapper


def open_workspace(repo: Path | None, **overrides: Any) -> "Workspace":
    from llmkit.workspace import Workspace

    ws = Workspace.open(str(repo) if repo else None, **overrides)
    return ws


def synced_workspace(repo: Path | None) -> "Workspace":
    ws = open_workspace(repo)
    ws.index.sync()
    return ws


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console()


def split_ref(spec: str) -> tuple[str, str | None]:
    """`key@version` -> (key, version)."""
    key, _, version = spec.partition("@")
    return key, (version or None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmkit")
def main() -> None:
    """Prompts as code: prompt files in git, an index in SQLite, an OpenAI-compatible API."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
@handle_errors
def init(directory: Path) -> None:
    """Scaffold a prompt repository in DIRECTORY (prompts/, evals/, llmkit.yaml, a first commit)."""
    from llmkit.scaffold import init_repository

    created = init_repository(directory)
    for path in created:
        click.echo(f"created {path}")
    click.echo(f"Initialized a prompt repository in {directory.resolve()}")


@main.command()
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


def _rebuild_with_progress(ws: "Workspace", quiet: bool):  # type: ignore[no-untyped-def]
    if quiet or not sys.stderr.isatty():
        return ws.index.rebuild()
    from rich.progress import Progress

    with Progress(console=console()) as progress:
        task = progress.add_task("Rebuilding index", total=None)

        def step(phase: str, done: int, total: int) -> None:
            progress.update(task, description=f"Rebuilding index: {phase}", completed=done, total=total or None)

        return ws.index.rebuild(progress=step)


@main.command()
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


@main.command()
@repo_option
@click.argument("key")
@click.option("--patch", "-p", is_flag=True, help="Show each version's diff.")
@json_option
@handle_errors
def history(repo: Path | None, key: str, patch: bool, as_json: bool) -> None:
    """The versions of a prompt, oldest first."""
    from llmkit.index import iso_time

    ws = synced_workspace(repo)
    rows = []
    for v, diff in ws.index.history(key):
        rows.append(
            {
                "number": v.number,
                "sha": v.sha,
                "draft": v.draft,
                "author": v.commit.author_name if v.commit else None,
                "email": v.commit.author_email if v.commit else None,
                "date": iso_time(v.commit.authored_at) if v.commit else None,
                "message": v.commit.message if v.commit else "uncommitted changes in the working tree",
                "diff": diff,
            }
        )
    if as_json:
        print_json(rows)
        return
    out = console()
    for row in rows:
        sha = (row["sha"] or "draft")[:10]
        first_line = str(row["message"]).splitlines()[0] if row["message"] else ""
        line = f"[bold]{row['number']:>3}[/bold] [yellow]{sha:<10}[/yellow] {row['date'] or '':<20} {row['author'] or '':<20} {first_line}"
        out.print(line, highlight=False, soft_wrap=True)
        if patch:
            out.print(row["diff"], highlight=False, markup=False)


@main.command()
@repo_option
@click.argument("spec", metavar="KEY[@VERSION]")
@json_option
@handle_errors
def show(repo: Path | None, spec: str, as_json: bool) -> None:
    """Print a prompt file at a version (number, sha, branch or tag); default: what is served."""
    from llmkit.index import prompt_fields, version_fields

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


@main.command()
@repo_option
@click.argument("key")
@click.argument("old")
@click.argument("new", required=False)
@handle_errors
def diff(repo: Path | None, key: str, old: str, new: str | None) -> None:
    """Unified diff of a prompt between two versions (NEW defaults to what is served)."""
    ws = synced_workspace(repo)
    text = ws.index.diff(key, old, new)
    click.echo(text, nl=False)


def parse_vars(pairs: tuple[str, ...], vars_json: Path | None) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if vars_json is not None:
        try:
            loaded = json.loads(vars_json.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read variables from {vars_json}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{vars_json} must hold a JSON object of variables")
        variables.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--var takes NAME=VALUE, got {pair!r}")
        variables[name] = value
    return variables


var_options = [
    click.option("--var", "var_pairs", multiple=True, metavar="NAME=VALUE", help="A template variable (repeatable)."),
    click.option("--vars-json", type=click.Path(dir_okay=False, path_type=Path), help="A JSON file of variables."),
]


def with_vars(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(var_options):
        fn = option(fn)
    return fn


@main.command()
@repo_option
@click.argument("spec", metavar="KEY[@VERSION]")
@with_vars
@json_option
@handle_errors
def render(repo: Path | None, spec: str, var_pairs: tuple[str, ...], vars_json: Path | None, as_json: bool) -> None:
    """Print the messages a prompt renders to with the given variables."""
    from llmkit.render import render_messages

    ws = synced_workspace(repo)
    key, version_spec = split_ref(spec)
    version = ws.index.version(key, version_spec)
    messages = render_messages(
        version.prompt(), parse_vars(var_pairs, vars_json), limits=ws.models.limits(),
        path=version.path,
    )
    if as_json:
        print_json(messages)
        return
    out = console()
    for message in messages:
        out.rule(f"[bold]{message['role']}[/bold]", align="left")
        out.print(message["content"], markup=False, highlight=False)


# Commands that live in modules of their own register themselves on `main` when imported;
# their heavy imports stay inside the command functions.
from llmkit import cli_eval, cli_import, cli_run, cli_serve  # noqa: E402,F401

if __name__ == "__main__":
    main()

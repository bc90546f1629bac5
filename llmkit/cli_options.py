"""What every command of the `llmkit` command line shares: the `--repo`, `--json` and `--var`
options, opening the workspace, printing, and the edge where an LlmkitError becomes a one-line
message and an exit code.

Nothing heavy is imported here or at the top of any `cli_*` module: `llmkit --help` and
`llmkit lint` load no litellm, fastapi or asyncio, so each command imports what it needs inside
its function.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llmkit.errors import ConfigError, LlmkitError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

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


def open_workspace(repo: Path | None, **overrides: Any) -> Workspace:
    from llmkit.workspace import Workspace

    return Workspace.open(str(repo) if repo else None, **overrides)


def synced_workspace(repo: Path | None) -> Workspace:
    ws = open_workspace(repo)
    ws.index.sync()
    return ws


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def console() -> Console:
    from rich.console import Console

    return Console()


def split_ref(spec: str) -> tuple[str, str | None]:
    """`key@version` -> (key, version)."""
    key, _, version = spec.partition("@")
    return key, (version or None)


def parse_vars(pairs: tuple[str, ...], vars_json: Path | None) -> dict[str, Any]:
    """Variables from `--vars-json FILE`, then each `--var`: `NAME=VALUE` is the string VALUE,
    `NAME:=JSON` the JSON value (`formal:=false`, `n:=3`, `tags:='["a", "b"]'`)."""
    variables: dict[str, Any] = {}
    if vars_json is not None:
        variables.update(_load_vars_file(vars_json))
    for pair in pairs:
        name, sep, value = pair.partition("=")
        is_json = name.endswith(":")
        name = name.removesuffix(":")
        if not sep or not name:
            raise ConfigError(f"--var takes NAME=VALUE or NAME:=JSON, got {pair!r}")
        variables[name] = _json_value(name, value) if is_json else value
    return variables


def _load_vars_file(path: Path) -> dict[str, Any]:
    from llmkit.budgets import MAX_JSON_DEPTH, json_too_deep

    try:
        text = path.read_text("utf-8")
        if json_too_deep(text, MAX_JSON_DEPTH):
            raise ValueError(f"JSON nests more than {MAX_JSON_DEPTH} levels")
        loaded = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read variables from {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a JSON object of variables")
    return loaded


def _json_value(name: str, text: str) -> Any:
    from llmkit.budgets import json_value

    try:
        return json_value(text)
    except ValueError as exc:
        raise ConfigError(
            f"--var {name}:= takes a JSON value ({exc}); got {text[:80]!r}."
            f" For the text itself, use --var {name}=..."
        ) from None


var_options = [
    click.option(
        "--var",
        "var_pairs",
        multiple=True,
        metavar="NAME=TEXT|NAME:=JSON",
        help="A template variable (repeatable): NAME=text is a string,"
        ' NAME:=JSON a JSON value (true, 3, [1, 2], {"a": 1}).',
    ),
    click.option(
        "--vars-json",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A JSON file holding an object of variables (--var adds to it).",
    ),
]


def with_vars(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(var_options):
        fn = option(fn)
    return fn


def progress_bar() -> Progress:
    """The commands' progress bar on stderr: what it does, a bar, done of total, time taken."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )

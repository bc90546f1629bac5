"""The `llmkit` command: the group, and every command registered on it in one place.

Each command lives in the `cli_*` module named for what it works on, as a thin front that
parses flags, calls the core and prints; what the commands share (`--repo`, `--json`, `--var`,
errors as exit codes) is in `cli_options`. A new command is a function in its module and one
line in COMMANDS. The modules import nothing heavy at their top, so `llmkit --help` and
`llmkit lint` stay fast and never load litellm or fastapi.
"""

from __future__ import annotations

import click

from llmkit import (
    __version__,
    cli_eval,
    cli_import,
    cli_keys,
    cli_logs,
    cli_prompts,
    cli_repo,
    cli_run,
    cli_serve,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="llmkit")
def main() -> None:
    """Prompts as code: prompt files in git, an index in SQLite, an OpenAI-compatible API."""


COMMANDS: tuple[click.Command, ...] = (
    # the repository: cli_repo.py
    cli_repo.init,
    cli_repo.index,
    cli_repo.lint,
    # one prompt, its versions and what it renders to: cli_prompts.py
    cli_prompts.history,
    cli_prompts.show,
    cli_prompts.diff,
    cli_prompts.render,
    # executing prompts and reading the run log
    cli_run.run,
    cli_logs.logs,
    cli_eval.eval_command,
    # the HTTP API and its keys
    cli_serve.serve,
    cli_keys.keys,
    cli_keys.sessions,
    # bringing data from elsewhere
    cli_import.import_llmkit,
)
for command in COMMANDS:
    main.add_command(command)


if __name__ == "__main__":
    main()

"""`llmkit run`: execute a prompt from the terminal, streaming its answer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from llmkit.cli_options import (
    handle_errors,
    json_option,
    parse_vars,
    print_json,
    repo_option,
    synced_workspace,
    with_vars,
)


@click.command()
@repo_option
@click.argument("spec", metavar="KEY[@VERSION]")
@with_vars
@click.option(
    "-m",
    "--message",
    "messages",
    multiple=True,
    help="A user message (repeatable: a conversation).",
)
@click.option("--no-stream", is_flag=True, help="Wait for the whole answer.")
@json_option
@handle_errors
def run(
    repo: Path | None,
    spec: str,
    var_pairs: tuple[str, ...],
    vars_json: Path | None,
    messages: tuple[str, ...],
    no_stream: bool,
    as_json: bool,
) -> None:
    """Execute a prompt and print the answer as it streams in."""
    import asyncio

    from llmkit.execute import Executor

    ws = synced_workspace(repo)
    ws.runlog.start()
    executor = Executor(ws, ws.models, ws.runlog)
    body: dict[str, Any] = {
        "model": spec,
        "variables": parse_vars(var_pairs, vars_json),
        "messages": [{"role": "user", "content": m} for m in messages],
    }
    try:
        ex = executor.prepare(body, source="cli")
        if as_json or no_stream:
            response = asyncio.run(_complete(executor, ex))
            if as_json:
                print_json(response)
            else:
                click.echo(response["choices"][0]["message"].get("content") or "")
        else:
            asyncio.run(_stream(executor, ex))
        click.echo(f"[{ex.key} version {ex.version_label}, trace {ex.trace_id}]", err=True)
    finally:
        ws.close()


async def _complete(executor: Any, ex: Any) -> dict[str, Any]:
    from llmkit import providers

    try:
        return await executor.complete(ex)
    finally:
        await providers.aclose()


async def _stream(executor: Any, ex: Any) -> None:
    from llmkit import providers

    try:
        async for chunk in executor.stream(ex):
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    sys.stdout.write(delta["content"])
                    sys.stdout.flush()
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    sys.stdout.write(
                        f"{function.get('name') or ''}{function.get('arguments') or ''}"
                    )
        sys.stdout.write("\n")
        sys.stdout.flush()
    finally:
        await providers.aclose()

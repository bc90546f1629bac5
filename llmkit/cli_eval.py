"""`llmkit eval`: run eval cases, compare with a base ref, write reports. Exit codes: 0 all
pass, 1 failures or regressions, 2 usage or configuration errors (a provider key that is not
set among them: one message naming the variable, not every case failed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llmkit.cli_options import progress_bar, repo_option
from llmkit.errors import LlmkitError, ProviderNotConfigured

if TYPE_CHECKING:
    from llmkit.evals.cases import EvalCase
    from llmkit.evals.records import EvalRecords
    from llmkit.evals.runner import EvalRunner
    from llmkit.evals.session import EvalRequest, EvalSession


def fail_usage(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


@click.command("eval")
@repo_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--prompt", "prompt_keys", multiple=True, help="Only cases of this prompt key (repeatable)."
)
@click.option(
    "--ref",
    default=None,
    help="Run the prompt versions at this git ref (default: the working tree).",
)
@click.option(
    "--base", default=None, help="Also run at this ref (e.g. origin/main) and report regressions."
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Calls in flight at once.",
)
@click.option("--repeat", type=click.IntRange(1, 100), default=None, help="Run every case N times.")
@click.option(
    "--no-cache", is_flag=True, help="Always call the provider; do not read the response cache."
)
@click.option(
    "--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JSON results here.",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a markdown summary here.",
)
@click.option(
    "--judge-model", default="judge", show_default=True, help="Model or alias for judge assertions."
)
def eval_command(**options: Any) -> None:
    """Run eval cases against the prompts and report; with --base, fail on regressions."""
    try:
        code = _run(**options)
    except ProviderNotConfigured as exc:
        fail_usage(
            f"{exc.message}\nThe eval stopped there: this is a configuration error (exit 2), not"
            " failing cases, and no results were saved. Set the variable (in CI, from a"
            " secret) and run again."
        )
    except LlmkitError as exc:
        fail_usage(exc.message)
    sys.exit(code)


def _run(
    *,
    repo: Path | None,
    paths: tuple[Path, ...],
    prompt_keys: tuple[str, ...],
    ref: str | None,
    base: str | None,
    jobs: int,
    repeat: int | None,
    no_cache: bool,
    junit: Path | None,
    json_path: Path | None,
    markdown: Path | None,
    judge_model: str,
) -> int:
    import asyncio

    from llmkit.evals.console import make_console, print_report
    from llmkit.evals.records import EvalRecords
    from llmkit.evals.report import render_markdown, write_json, write_junit
    from llmkit.evals.session import EvalRequest, eval_runner, planned_runs, select_cases
    from llmkit.execute import Executor
    from llmkit.workspace import Workspace

    for name, path in (("--junit", junit), ("--json", json_path), ("--markdown", markdown)):
        if path is not None and not path.resolve().parent.is_dir():
            fail_usage(f"{name} {path}: the folder {path.resolve().parent} does not exist")
    request = EvalRequest(
        prompt_keys=prompt_keys,
        paths=tuple(Path.cwd() / path for path in paths),
        ref=ref,
        base=base,
        concurrency=jobs,
        repeat=repeat,
        use_cache=not no_cache,
        judge_model=judge_model,
        source="cli",
        labels={"ref": "--ref", "base": "--base"},
    )
    ws = Workspace.open(str(repo) if repo else None)
    try:
        ws.index.sync()
        cases = select_cases(ws, request)
        records = EvalRecords(ws.durable)
        runner = eval_runner(ws, Executor(ws, ws.models, ws.runlog), records, request)
        total = planned_runs(runner, cases, request)
        ws.runlog.start()
        session = asyncio.run(_execute(runner, records, cases, request, total))
    finally:
        ws.close()
    report, run_id = session.report, session.run_id
    print_report(make_console(), report, run_id)
    if junit:
        write_junit(junit, report)
    if json_path:
        write_json(json_path, report)
    summary = render_markdown(report)
    if markdown:
        markdown.write_text(summary, "utf-8")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and (not markdown or Path(step_summary).resolve() != markdown.resolve()):
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(summary + "\n")
    return 0 if report.ok and not report.regressions else 1


async def _execute(
    runner: EvalRunner,
    records: EvalRecords,
    cases: list[EvalCase],
    request: EvalRequest,
    total: int,
) -> EvalSession:
    from llmkit import providers
    from llmkit.evals.session import run_session

    progress, finish = _progress(total)
    try:
        return await run_session(runner, records, cases, request, progress)
    finally:
        finish()
        await providers.aclose()


def _progress(total: int) -> tuple[Any, Any]:
    """A rich progress bar on a terminal; plain lines otherwise (CI logs)."""
    if sys.stderr.isatty():
        bar = progress_bar()
        task = bar.add_task("eval", total=total)
        bar.start()
        return (lambda result: bar.advance(task)), bar.stop
    done = [0]

    def line(result: Any) -> None:
        from llmkit.evals.console import run_lines

        done[0] += 1
        for text in run_lines(result, done[0], total):
            click.echo(text, err=True)

    return line, (lambda: None)

"""`llmkit eval`: run eval cases, compare with a base ref, write reports. Exit codes: 0 all
pass, 1 failures or regressions, 2 usage or configuration errors (a provider key that is not
set among them: one message naming the variable, not every case failed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from llmkit.cli_options import repo_option
from llmkit.errors import LlmkitError, ProviderNotConfigured


def fail_usage(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


@click.command("eval")
@repo_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--prompt", "prompt_keys", multiple=True, help="Only cases of this prompt key (repeatable).")
@click.option("--ref", default=None, help="Run the prompt versions at this git ref (default: the working tree).")
@click.option("--base", default=None, help="Also run at this ref (e.g. origin/main) and report regressions.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=8, show_default=True, help="Calls in flight at once.")
@click.option("--repeat", type=click.IntRange(1, 100), default=None, help="Run every case N times.")
@click.option("--no-cache", is_flag=True, help="Always call the provider; do not read the response cache.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON results here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write a markdown summary here.")
@click.option("--judge-model", default="judge", show_default=True, help="Model or alias for judge assertions.")
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

    from llmkit.evals.records import EvalRecords
    from llmkit.evals.report import build_report, render_markdown, render_table, write_json, write_junit
    from llmkit.evals.runner import EvalRunner, RunOptions
    from llmkit.evals.spec import load_evals
    from llmkit.execute import Executor
    from llmkit.runlog import utc_now
    from llmkit.workspace import Workspace

    for name, path in (("--junit", junit), ("--json", json_path), ("--markdown", markdown)):
        if path is not None and not path.resolve().parent.is_dir():
            fail_usage(f"{name} {path}: the folder {path.resolve().parent} does not exist")
    ws = Workspace.open(str(repo) if repo else None)
    try:
        ws.index.sync()
        ws.models.aliases()  # a broken llmkit.yaml is a configuration error, not failing cases
        for name, given in (("--ref", ref), ("--base", base)):
            if given and ws.store.resolve_ref(given) is None:
                fail_usage(f"{name} {given!r} is not a branch, tag or commit in {ws.settings.repo}")
        cases, problems = load_evals(ws.settings.repo)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            for p in errors:
                click.echo(f"{p.path}:{p.line or 1}: {p.message}", err=True)
            fail_usage(f"{len(errors)} problem(s) in eval files; fix them (llmkit lint) and run again")
        cases = _select(cases, paths, prompt_keys, ws.settings.repo)
        if not cases:
            fail_usage("No eval cases to run (evals/<prompt key>/*.yaml)")
        records = EvalRecords(ws.db)
        runner = EvalRunner(
            Executor(ws, ws.models, ws.runlog),
            records,
            RunOptions(concurrency=jobs, repeat=repeat, use_cache=not no_cache, judge_model=judge_model),
        )
        if ref:
            planned = {case.prompt_key for case, _, _ in runner.plan(cases, ref)}
            missing = sorted({c.prompt_key for c in cases} - planned)
            if missing:
                fail_usage(f"No prompt {', '.join(missing)} at --ref {ref}; leave its cases out (--prompt, PATHS)")
        ws.runlog.start()
        started = utc_now()
        results, base_results = asyncio.run(_execute(runner, cases, ref, base))
        report = build_report(results, base_results, base)
        run_id = records.save_run(
            results, base_results, ref=ref, base_ref=base, source="cli", summary=report.counts(), started_at=started
        )
    finally:
        ws.close()
    from rich.console import Console

    console = Console(stderr=False)
    console.print(render_table(report))
    counts = report.counts()
    console.print(
        f"{counts['passed']}/{counts['cases']} cases passed, {counts['regressions']} regression(s),"
        f" {counts['cached_runs']}/{counts['runs']} runs from cache (run {run_id[:12]})",
        highlight=False,
    )
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


def _select(cases: list[Any], paths: tuple[Path, ...], prompt_keys: tuple[str, ...], root: Path) -> list[Any]:
    if prompt_keys:
        unknown = set(prompt_keys) - {c.prompt_key for c in cases}
        if unknown:
            fail_usage(f"No eval cases for prompt(s): {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.prompt_key in prompt_keys]
    if paths:
        wanted = []
        for path in paths:
            resolved = (Path.cwd() / path).resolve()
            if not resolved.exists():
                fail_usage(f"{path} does not exist")
            wanted.append(resolved)

        def selected(case: Any) -> bool:
            file = (root / case.file).resolve()
            return any(file == w or w in file.parents for w in wanted)

        cases = [c for c in cases if selected(c)]
    return cases


async def _execute(runner: Any, cases: list[Any], ref: str | None, base: str | None) -> tuple[list[Any], list[Any] | None]:
    from llmkit import providers

    # Cases new since the base have no base runs.
    total = len(runner.plan(cases, ref)) + (len(runner.plan(cases, base)) if base else 0)
    progress, finish = _progress(total)
    try:
        results = await runner.run(cases, ref, progress)
        base_results = await runner.run(cases, base, progress) if base else None
    finally:
        finish()
        await providers.aclose()
    return results, base_results


def _progress(total: int) -> tuple[Any, Any]:
    """A rich progress bar on a terminal; plain lines otherwise (CI logs)."""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True))
        task = bar.add_task("eval", total=total)
        bar.start()
        return (lambda result: bar.advance(task)), bar.stop
    done = [0]

    def line(result: Any) -> None:
        done[0] += 1
        mark = "pass" if result.passed else "FAIL"
        where = f"{result.prompt_key}@{result.version_number or (result.version_sha or 'draft')[:7]}"
        click.echo(f"[{done[0]}/{total}] {mark} {where} {result.case_name}", err=True)

    return line, (lambda: None)

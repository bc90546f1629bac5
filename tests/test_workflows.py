"""The GitHub workflows, the action and the pre-commit hook: they parse, every `llmkit` command
they run exists with the flags they give it, and the action's steps (which the eval workflow
uses), run as written in a clone of a prompt repository, do what the workflow expects."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from llmkit.cli import main
from tests.action_steps import ACTION, ActionRun, load_action
from tests.eval_fixtures import GREET_BOTH_MD, EvalRepo, feature_files
from tests.helpers import PROJECT_ROOT, clean_env, git

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
HOOKS = PROJECT_ROOT / ".pre-commit-hooks.yaml"
STEP_TIMEOUT_S = 60
LLMKIT_COMMAND = re.compile(r"(?:^|[;&|(]|\n)\s*llmkit((?:[ \t]+[^\s;&|)]+)*)")


def load(path: Path) -> Any:
    # `on:` is YAML 1.1's boolean true; GitHub reads it as the key "on".
    data = yaml.safe_load(path.read_text("utf-8"))
    if isinstance(data, dict) and True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def llmkit_commands(script: str) -> list[list[str]]:
    """Every `llmkit ...` command line in a shell script, as argument lists."""
    return [shlex.split(m.group(1)) for m in LLMKIT_COMMAND.finditer(script)]


def all_llmkit_commands() -> list[list[str]]:
    commands = []
    scripts = [
        step.get("run", "")
        for name in ("ci.yml", "evals.yml")
        for step in steps(load(WORKFLOWS / name))
    ]
    scripts += [step.get("run", "") for step in load_action()["runs"]["steps"]]
    for script in scripts:
        commands += llmkit_commands(script.replace("\\\n", " "))
    for hook in load(HOOKS):
        commands += llmkit_commands(hook["entry"])
    return commands


def split_command(args: list[str]) -> tuple[list[str], list[str]]:
    """(subcommand path, flags) of an llmkit argument list; the path is empty when the first
    word is no llmkit command."""
    command: click.Command = main
    path = []
    for arg in args:
        if not isinstance(command, click.Group) or arg not in command.commands:
            break
        command = command.commands[arg]
        path.append(arg)
    return path, [a.split("=", 1)[0] for a in args if a.startswith("-")]


def test_workflows_and_hooks_parse() -> None:
    ci = load(WORKFLOWS / "ci.yml")
    evals = load(WORKFLOWS / "evals.yml")
    assert set(ci["on"]) >= {"push", "pull_request"}
    assert set(evals["on"]["pull_request"]["paths"]) == {
        "prompts/**",
        "evals/**",
        "llmkit.yaml",
        "action.yml",
    }
    for workflow in (ci, evals):
        assert workflow["jobs"] and all(job["steps"] for job in workflow["jobs"].values())
        for step in steps(workflow):
            assert ("run" in step) != ("uses" in step), step
    checkout = next(s for s in steps(evals) if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0, "--base needs the base branch's history"
    [action] = [s for s in steps(evals) if s.get("uses") == "./"]
    assert action["with"]["token"] == "${{ secrets.GITHUB_TOKEN }}"
    assert evals["permissions"] == {"contents": "read", "pull-requests": "write"}
    hooks = load(HOOKS)
    assert [h["id"] for h in hooks] == ["llmkit-lint"]
    assert all({"id", "name", "entry", "language"} <= set(h) for h in hooks)


def test_every_llmkit_command_exists_with_its_flags() -> None:
    commands = all_llmkit_commands()
    assert {tuple(split_command(c)[0]) for c in commands} >= {("lint",), ("eval",)}
    runner = CliRunner()
    for args in commands:
        path, flags = split_command(args)
        top_level = all(a.startswith("-") for a in args)  # llmkit --version
        assert path or top_level, f"llmkit {' '.join(args)}: no such command"
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, f"llmkit {' '.join(path)}: {result.output}"
        for flag in flags:
            assert re.search(rf"(^|[\s,/]){re.escape(flag)}\b", result.output), (
                f"llmkit {' '.join(path)} has no {flag}"
            )


def test_install_and_test_commands_match_the_project() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text("utf-8"))
    runs = [s["run"] for s in steps(load(WORKFLOWS / "ci.yml")) if "run" in s]
    assert any("pip install -e '.[dev]'" in r for r in runs)
    dev = " ".join(project["project"]["optional-dependencies"]["dev"])
    assert "pytest" in dev
    assert any(r.strip() == "python -m pytest" for r in runs)
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    # The hook (language: python) and the workflows run the `llmkit` console script.
    assert project["project"]["scripts"]["llmkit"] == "llmkit.cli:main"
    minimum = project["project"]["requires-python"].removeprefix(">=")
    [setup] = [s for s in steps(load(WORKFLOWS / "ci.yml")) if "setup-python" in s.get("uses", "")]
    assert version_tuple(setup["with"]["python-version"]) >= version_tuple(minimum)
    action = load_action()
    [setup] = [s for s in action["runs"]["steps"] if "setup-python" in s.get("uses", "")]
    assert setup["with"]["python-version"] == "${{ inputs.python-version }}"
    assert version_tuple(action["inputs"]["python-version"]["default"]) >= version_tuple(minimum)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_pre_commit_hook_files_pattern() -> None:
    [hook] = load(HOOKS)
    pattern = re.compile(hook["files"])
    for path in ("prompts/a.md", "prompts/support/b.md", "evals/a/basic.yaml", "llmkit.yaml"):
        assert pattern.search(path), path
    for path in ("README.md", "llmkit/cli.py", "tests/prompts/x.md", "llmkit.yaml.bak"):
        assert not pattern.search(path), path
    assert hook["pass_filenames"] is False  # lint checks the whole repository


# -- the action's steps, run as written ------------------------------------------------------


def console_script(bin_dir: Path) -> Path:
    """An `llmkit` executable made from pyproject's [project.scripts] entry, as pip would."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text("utf-8"))
    module, function = project["project"]["scripts"]["llmkit"].split(":")
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "llmkit"
    script.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        f'\'import sys; sys.argv[0] = "llmkit"; from {module} import {function}; '
        f'sys.exit({function}())\' "$@"\n',
        "utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def pull_request_clone(tmp_path: Path, origin: EvalRepo, branch: str) -> EvalRepo:
    """What actions/checkout with fetch-depth 0 leaves for a pull request from `branch` into
    main: the whole history, and a detached HEAD on the merge commit of the two."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin.root), str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(tmp_path / "checkout"))
    clone = EvalRepo(tmp_path / "checkout")
    clone.identify()
    clone.git("checkout", "-q", "--detach", "origin/main")
    clone.git("merge", "-q", "--no-ff", "-m", f"Merge {branch} into main", f"origin/{branch}")
    assert clone.git("rev-parse", "--abbrev-ref", "HEAD") == "HEAD"
    return clone


def run_step(
    step: dict[str, Any], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A `run:` step as GitHub runs it: bash -e, the step's env over the job's."""
    step_env = {k: str(v) for k, v in (step.get("env") or {}).items()}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env={**env, **step_env},
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )


def workflow_env(tmp_path: Path, summary: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    console_script(bin_dir)
    env = clean_env(GITHUB_STEP_SUMMARY=str(summary), NO_COLOR="1", COLUMNS="200")
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    return env


def action_run(tmp_path: Path, clone: EvalRepo, summary: Path, **inputs: str) -> ActionRun:
    """The action on a pull request into main, without a token (no comment)."""
    temp = tmp_path / "runner-temp"
    temp.mkdir(exist_ok=True)
    return ActionRun(
        clone.root,
        temp,
        workflow_env(tmp_path, summary),
        inputs=inputs,
        github={"base_ref": "main"},
    )


@pytest.fixture
def summary(tmp_path: Path) -> Path:
    path = tmp_path / "step-summary.md"
    path.write_text("", "utf-8")
    return path


def test_no_expression_is_spliced_into_a_script() -> None:
    """Inputs are data: they reach the shell only through environment variables."""
    action = load_action()
    scripts = [s["run"] for s in action["runs"]["steps"] if "run" in s]
    assert len(scripts) >= 4
    assert all("${{" not in script for script in scripts)
    for workflow in WORKFLOWS.glob("*.yml"):
        assert all("${{" not in s.get("run", "") for s in steps(load(workflow))), workflow
    assert ACTION.is_file()


def test_action_steps_pass_on_a_clean_pull_request(
    eval_repo: EvalRepo, tmp_path: Path, summary: Path
) -> None:
    eval_repo.branch("fix", {"prompts/greet.md": GREET_BOTH_MD}, "Hello and goodbye")
    clone = pull_request_clone(tmp_path, eval_repo, "fix")
    run = action_run(tmp_path, clone, summary)
    assert run.run() == 0, run.log()
    assert run.names() == ["Lint prompts and evals", "Run evals against the base branch"]
    reports = Path(run.outputs["eval"]["report-dir"])
    for report in ("eval-results.xml", "eval-results.json", "eval-summary.md"):
        assert (reports / report).is_file(), report
    assert run.outputs["eval"]["exit-code"] == "0"
    markdown = (reports / "eval-summary.md").read_text("utf-8")
    assert "Before: prompt versions on origin/main" in markdown
    assert clone.git("status", "--porcelain") == ""  # reports stay out of the checkout
    # The job summary holds the eval summary once.
    assert summary.read_text("utf-8").count(markdown) == 1


def test_action_fails_on_a_regression_after_writing_its_reports(
    eval_repo: EvalRepo, tmp_path: Path, summary: Path
) -> None:
    eval_repo.branch("feature", feature_files(), "Say goodbye instead")
    clone = pull_request_clone(tmp_path, eval_repo, "feature")
    run = action_run(tmp_path, clone, summary, **{"eval-args": "-j 2 --no-cache"})
    assert run.run() == 1, run.log()
    assert run.names() == [
        "Lint prompts and evals",
        "Run evals against the base branch",
        "Fail on failing cases or regressions",
    ]
    assert run.outputs["eval"]["exit-code"] == "1"
    assert "::error::llmkit eval" in run.step("Fail on failing cases or regressions").stdout
    reports = Path(run.outputs["eval"]["report-dir"])
    assert "regression" in (reports / "eval-summary.md").read_text("utf-8")


def test_a_base_ref_missing_from_the_checkout_is_a_clear_error(
    eval_repo: EvalRepo, tmp_path: Path, summary: Path
) -> None:
    clone = pull_request_clone(tmp_path, eval_repo, "main")
    for base in ("release-9", "--output=/tmp/x"):
        run = action_run(tmp_path, clone, summary, **{"base-ref": base})
        assert run.run() == 2, run.log()
        step = run.step("Run evals against the base branch")
        assert f"base-ref '{base}'" in step.stdout
    # Not a pull request: no base, evals run without a comparison.
    run = action_run(tmp_path, clone, summary, **{"base-ref": ""})
    assert run.run() == 1, run.log()  # main's greet fails its goodbye case
    markdown = (Path(run.outputs["eval"]["report-dir"]) / "eval-summary.md").read_text("utf-8")
    assert "Before:" not in markdown


def test_eval_args_are_flags_not_shell(eval_repo: EvalRepo, tmp_path: Path, summary: Path) -> None:
    clone = pull_request_clone(tmp_path, eval_repo, "main")
    canary = tmp_path / "canary"
    run = action_run(
        tmp_path,
        clone,
        summary,
        **{"eval-args": f"--prompt chat; touch {canary} $(touch {canary})"},
    )
    assert run.run() == 2, run.log()
    assert not canary.exists()
    # `touch` arrived as a word of llmkit's own arguments (a path to evals), never as a command.
    assert "touch does not exist" in run.step("Run evals against the base branch").stderr


def test_lint_step_fails_on_a_broken_eval_file(
    eval_repo: EvalRepo, tmp_path: Path, summary: Path
) -> None:
    eval_repo.write("evals/greet/broken.yaml", "name: broken\nassert:\n- type: containz\n")
    run = action_run(tmp_path, eval_repo, summary)
    assert run.run() == 1
    assert run.names() == ["Lint prompts and evals"]
    lint = run.step("Lint prompts and evals")
    assert "::error file=evals/greet/broken.yaml,line=3" in lint.stdout


def test_lint_step_fails_on_a_broken_llmkit_yaml(
    eval_repo: EvalRepo, tmp_path: Path, summary: Path
) -> None:
    [hook] = load(HOOKS)
    assert "llmkit.yaml" in hook["description"]
    eval_repo.write("llmkit.yaml", "models:\n  default: {}\n")
    proc = run_step({"run": hook["entry"]}, eval_repo.root, workflow_env(tmp_path, summary))
    assert proc.returncode == 1
    assert "llmkit.yaml" in proc.stdout

"""A team adopts llmkit in a prompt repository of its own (prompts/, evals/, llmkit.yaml; no
llmkit source, no pyproject.toml): llmkit installed from a wheel of this checkout into a fresh
virtualenv, `llmkit init` sets the repository up, and the action's steps, as the scaffolded
workflow runs them, fail a pull request with a regression and pass a clean one, keeping one
comment on a fake GitHub up to date."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from llmkit import __version__
from llmkit.cli import main
from llmkit.scaffold import SOURCE_REPOSITORY
from tests.action_steps import ActionRun, load_action
from tests.eval_fixtures import EvalRepo
from tests.fake_github import REPOSITORY, TOKEN, FakeGitHub
from tests.helpers import PROJECT_ROOT, clean_env, git

BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
TAG = f"v{__version__}"


# -- llmkit installed from a wheel --------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding llmkit from a wheel of this checkout (its dependencies come from
    the system's site-packages), and the environment that runs it and nothing else."""

    venv: Path
    wheel: Path
    env: dict[str, str]

    def llmkit(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "llmkit"), *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def venv_env(venv: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """clean_env without this checkout on PYTHONPATH, the venv first on PATH."""
    env = clean_env(NO_COLOR="1", COLUMNS="200", **(extra or {}))
    env.pop("PYTHONPATH", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


def _checked(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One wheel build per session: the checkout's package files are copied out first, so the
    build leaves nothing behind in the checkout."""
    base = tmp_path_factory.mktemp("adoption")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    shutil.copytree(
        PROJECT_ROOT / "llmkit",
        source / "llmkit",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    env = clean_env(NO_COLOR="1", COLUMNS="200")
    env.pop("PYTHONPATH", None)
    wheels = base / "wheels"
    _checked(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        base,
        env,
    )
    [wheel] = wheels.glob("llmkit-*.whl")
    venv = base / "venv"
    _checked([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], base, env)
    # --force-reinstall: the system may hold an llmkit of the same version (an editable one);
    # the venv gets its own copy from the wheel, and leaves the system's alone.
    _checked(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--force-reinstall",
            str(wheel),
        ],
        base,
        env,
    )
    return Installed(venv, wheel, venv_env(venv))


def test_the_wheel_carries_the_one_version(installed: Installed) -> None:
    assert installed.wheel.name.startswith(f"llmkit-{__version__}-")
    init_text = (PROJECT_ROOT / "llmkit" / "__init__.py").read_text("utf-8")
    assert re.findall(r"^__version__ = \"([^\"]+)\"$", init_text, re.MULTILINE) == [__version__]
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text("utf-8"))
    assert "version" not in pyproject["project"]  # no second copy to forget
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "llmkit.__version__"}


def test_installed_llmkit_runs_in_a_prompt_repository_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    repo = EvalRepo.create(
        tmp_path / "prompts-repo",
        {
            "llmkit.yaml": "models:\n  default:\n    model: echo\n",
            "prompts/greet.md": "---\nmodel: default\n---\n<!-- role:system -->\nSay hello.\n",
        },
    )
    for flag in ("--version", "-V"):
        version = installed.llmkit(flag, cwd=repo.root)
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"llmkit, version {__version__}"
    where = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import llmkit; print(llmkit.__file__)"],
        cwd=repo.root,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout + where.stderr
    lint = installed.llmkit("lint", "--format", "github", cwd=repo.root)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 error(s)" in lint.stderr
    repo.write("prompts/broken.md", "---\nmodel: default\ncolour: red\n---\nHi\n")
    broken = installed.llmkit("lint", "--format", "github", cwd=repo.root)
    assert broken.returncode == 1
    assert "::error file=prompts/broken.md" in broken.stdout


# -- llmkit init ------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text("utf-8"))
    assert isinstance(data, dict), path
    if True in data:  # `on:` is YAML 1.1's true
        data["on"] = data.pop(True)
    return data


def init(*args: str) -> str:
    result = CliRunner().invoke(main, ["init", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_init_a_new_repository_pins_the_action_and_the_hook(tmp_path: Path) -> None:
    target = tmp_path / "team-prompts"
    out = init(str(target), "--llmkit-repo", "acme/llmkit")
    for rel in (
        ".github/workflows/llmkit.yml",
        ".pre-commit-config.yaml",
        "LLMKIT.md",
        "README.md",
        "llmkit.yaml",
        "prompts/hello.md",
        "evals/hello/basic.yaml",
    ):
        assert f"created {rel}" in out
    assert SOURCE_REPOSITORY not in out  # no placeholder to replace
    workflow = load_yaml(target / ".github/workflows/llmkit.yml")
    assert set(workflow["on"]["pull_request"]["paths"]) >= {"prompts/**", "evals/**"}
    assert workflow["permissions"]["pull-requests"] == "write"
    [job] = workflow["jobs"].values()
    checkout, action = job["steps"]
    assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0
    assert action["uses"] == f"acme/llmkit@{TAG}"
    assert set(action["with"]) <= set(load_action()["inputs"])
    hooks = load_yaml(target / ".pre-commit-config.yaml")
    [entry] = hooks["repos"]
    assert entry["repo"] == "https://github.com/acme/llmkit" and entry["rev"] == TAG
    ours = {h["id"] for h in yaml.safe_load((PROJECT_ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert {h["id"] for h in entry["hooks"]} <= ours
    doc = (target / "LLMKIT.md").read_text("utf-8")
    for step in ("Edit", "pull request", "eval comment", "Merge", "Serve"):
        assert step in doc
    assert f'pip install "llmkit @ git+https://github.com/acme/llmkit@{TAG}"' in doc
    assert git(target, "status", "--porcelain") == ""
    assert git(target, "log", "--format=%s") == "Set up the prompt repository for llmkit"


def test_init_an_existing_prompt_repository_keeps_every_file(tmp_path: Path) -> None:
    existing = {
        "README.md": "# Our prompts\n",
        "llmkit.yaml": "models:\n  default:\n    model: echo\n  fast:\n    model: echo\n",
        "prompts/support/reply.md": "---\nmodel: default\n---\n<!-- role:system -->\nHelp.\n",
        "evals/support/reply/basic.yaml": "name: helps\ninput: hi\nassert:\n- type: contains\n"
        "  value: Help.\n",
        ".pre-commit-config.yaml": "repos: []\n",
        ".gitignore": "*.pyc",  # no final newline
    }
    repo = EvalRepo.create(tmp_path / "existing", existing)
    head = repo.head()
    out = init(str(repo.root))
    assert "skipped prompts/hello.md (prompts/ already holds prompts)" in out
    for rel in ("README.md", "llmkit.yaml", ".pre-commit-config.yaml"):
        assert f"skipped {rel} (exists" in out
    assert "appended .llmkit/ to .gitignore (not committed)" in out
    for rel, text in existing.items():
        if rel != ".gitignore":
            assert repo.read(rel) == text, rel
    assert repo.read(".gitignore") == "*.pyc\n.llmkit/\n"
    assert not (repo.root / "prompts/hello.md").exists()
    committed = repo.git("show", "--name-only", "--format=", "HEAD").splitlines()
    assert sorted(committed) == [".github/workflows/llmkit.yml", "LLMKIT.md"]
    assert repo.git("rev-parse", "HEAD~1") == head
    assert repo.git("status", "--porcelain") == " M .gitignore"
    assert load_yaml(repo.root / ".github/workflows/llmkit.yml")["jobs"]
    # Nothing left to create: a second run commits nothing.
    again = init(str(repo.root))
    assert "created" not in again and "Nothing to create" in again
    assert len(repo.git("log", "--format=%H").splitlines()) == 2


def test_init_refuses_a_bad_repository_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "x"), "--llmkit-repo", "a b/c"])
    assert result.exit_code == 2
    assert "OWNER/NAME" in result.output
    assert not (tmp_path / "x").exists()


# -- a pull request in the team's repository, through the action ------------------------------

REPLY_MD = """\
---
model: default
---
<!-- role:system -->
You are the support desk of Acme. Greet the customer by name: {{ name }}.
Always end with: Have a good day.

<!-- role:user -->
{{ question }}
"""

REPLY_EVALS = """\
vars:
  name: Ada
user_vars:
  question: Where is my parcel?
cases:
- name: greets by name
  assert:
  - type: contains
    value: "customer by name: Ada"
- name: signs off politely
  assert:
  - type: contains
    value: Have a good day.
"""


@dataclass
class TeamRepo:
    """The team's repository on a remote, and pull requests from its branches into main."""

    root: Path
    remote: Path

    def branch(self, name: str, files: dict[str, str]) -> None:
        repo = EvalRepo(self.root)
        repo.checkout("main")
        repo.branch(name, files, f"Change {name}")
        repo.git("push", "-q", "origin", name)

    def pull_request(self, where: Path, branch: str) -> Path:
        """A checkout as actions/checkout leaves it for a pull request (fetch-depth 0)."""
        if where.exists():
            shutil.rmtree(where)
        git(self.remote.parent, "clone", "-q", str(self.remote), str(where))
        clone = EvalRepo(where)
        clone.identify()
        clone.git("checkout", "-q", "--detach", "origin/main")
        clone.git("merge", "-q", "--no-ff", "-m", f"Merge {branch} into main", f"origin/{branch}")
        return where


@pytest.fixture
def team_repo(installed: Installed, tmp_path: Path) -> TeamRepo:
    """`llmkit init` (the installed one) in a new repository, then a prompt and its cases."""
    root = tmp_path / "team"
    out = installed.llmkit("init", str(root), "--llmkit-repo", "acme/llmkit", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    repo = EvalRepo(root)
    repo.identify()
    repo.write("prompts/support/reply.md", REPLY_MD)
    repo.write("evals/support/reply/cases.yaml", REPLY_EVALS)
    repo.commit("A support reply prompt with its cases")
    assert not (root / "pyproject.toml").exists() and not (root / "llmkit").exists()
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(root), str(remote))
    repo.git("remote", "add", "origin", str(remote))
    repo.git("fetch", "-q", "origin")
    return TeamRepo(root, remote)


def scaffolded_action_inputs(root: Path) -> dict[str, str]:
    """The `with:` of the action step in the workflow `llmkit init` wrote, with the token the
    runner would pass."""
    workflow = load_yaml(root / ".github/workflows/llmkit.yml")
    [job] = workflow["jobs"].values()
    [step] = [s for s in job["steps"] if s["uses"].startswith("acme/llmkit@")]
    assert step["uses"] == f"acme/llmkit@{TAG}"
    inputs = {k: str(v) for k, v in step["with"].items()}
    assert inputs.pop("token") == "${{ secrets.GITHUB_TOKEN }}"
    return {**inputs, "token": TOKEN}


@pytest.fixture
def runner_env(
    installed: Installed, tmp_path: Path, fake_github: FakeGitHub
) -> Iterator[dict[str, str]]:
    """What the runner gives the steps: PATH with the installed llmkit, the job summary, the
    pull request event and GitHub's API (the fake)."""
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 42}}), "utf-8")
    summary = tmp_path / "summary.md"
    summary.write_text("", "utf-8")
    yield {
        **installed.env,
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_API_URL": fake_github.url,
        "GITHUB_REPOSITORY": REPOSITORY,
    }


def run_action(team: TeamRepo, tmp_path: Path, branch: str, env: dict[str, str]) -> ActionRun:
    checkout = team.pull_request(tmp_path / "checkout", branch)
    temp = tmp_path / "runner-temp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    run = ActionRun(
        checkout,
        temp,
        env,
        inputs=scaffolded_action_inputs(checkout),
        github={"base_ref": "main", "action_repository": "acme/llmkit"},
    )
    run.exit_code = run.run()  # type: ignore[attr-defined]
    return run


def test_a_regression_fails_the_pull_request_and_the_fix_passes_it(
    team_repo: TeamRepo,
    tmp_path: Path,
    runner_env: dict[str, str],
    fake_github: FakeGitHub,
) -> None:
    # (a) The sign-off is dropped: "signs off politely" passed on main and fails now.
    team_repo.branch(
        "shorter-reply",
        {
            "prompts/support/reply.md": REPLY_MD.replace("Always end with: Have a good day.\n", ""),
        },
    )
    regressed = run_action(team_repo, tmp_path, "shorter-reply", runner_env)
    assert regressed.exit_code == 1, regressed.log()  # type: ignore[attr-defined]
    assert regressed.names() == [
        "Lint prompts and evals",
        "Run evals against the base branch",
        "Comment on the pull request",
        "Fail on failing cases or regressions",
    ]
    evals = regressed.step("Run evals against the base branch")
    assert "signs off politely" in evals.stdout and "1 regression" in evals.stdout
    reports = Path(regressed.outputs["eval"]["report-dir"])
    markdown = (reports / "eval-summary.md").read_text("utf-8")
    assert "Regressions" in markdown and "signs off politely" in markdown
    assert "Before: prompt versions on origin/main" in markdown
    junit = ET.parse(reports / "eval-results.xml").getroot()
    failing = [
        c.get("name")
        for c in junit.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    assert failing == ["signs off politely"]
    assert json.loads((reports / "eval-results.json").read_text("utf-8"))
    assert markdown in Path(runner_env["GITHUB_STEP_SUMMARY"]).read_text("utf-8")
    [comment] = fake_github.ours(42)
    assert "signs off politely" in comment["body"] and "Regressions" in comment["body"]

    # (b) A clean change on another branch: a warmer greeting, both cases still pass. Its
    # run updates the same comment (the fake serves one pull request, number 42).
    team_repo.branch(
        "warmer-greeting",
        {
            "prompts/support/reply.md": REPLY_MD.replace("Greet the", "Warmly greet the"),
        },
    )
    clean = run_action(team_repo, tmp_path, "warmer-greeting", runner_env)
    assert clean.exit_code == 0, clean.log()  # type: ignore[attr-defined]
    assert "Fail on failing cases or regressions" not in clean.names()
    assert "updated comment" in clean.step("Comment on the pull request").stdout
    assert [c["id"] for c in fake_github.ours(42)] == [comment["id"]]
    body = fake_github.ours(42)[0]["body"]
    assert "Regressions" not in body and "signs off politely" in body
    assert [m for m in fake_github.methods() if m != "GET"] == ["POST", "PATCH"]


def test_the_readme_installs_and_pins_the_current_release() -> None:
    """The README's lines for teams name this version's tag, so a release that bumps the
    version and forgets the README fails here."""
    readme = (PROJECT_ROOT / "README.md").read_text("utf-8")
    assert f'pip install "llmkit @ git+https://github.com/{SOURCE_REPOSITORY}@{TAG}"' in readme
    assert f"uses: {SOURCE_REPOSITORY}@{TAG}" in readme
    assert "### Releasing" in readme and "vX.Y.Z" in readme
    inputs = load_action()["inputs"]
    for name in inputs:
        assert f"`{name}`" in readme, f"the action's input {name} is not in the README"

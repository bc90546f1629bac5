"""The composite action at the repository's root (`action.yml`), run step by step on this
machine as a runner would run it: each `run:` step in `bash -eo pipefail` with its `env:` and
`working-directory:`, `${{ ... }}` filled from the inputs, the `github`/`runner` contexts and
earlier steps' outputs (written to `$GITHUB_OUTPUT`), `if:` conditions evaluated, and the first
failing step ending the run. Steps that `uses:` another action (setup-python, upload-artifact)
and the install step are left to the caller: the tests install llmkit themselves.

    from tests.action_steps import ActionRun, load_action
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ACTION = PROJECT_ROOT / "action.yml"
INSTALL_STEP = "Install llmkit"
STEP_TIMEOUT_S = 120
_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_CONTEXT_NAME = re.compile(r"\b(?:inputs|github|runner|steps)(?:\.[A-Za-z_][\w-]*)+")


def load_action(path: Path = ACTION) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text("utf-8"))
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


@dataclass
class StepRun:
    name: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class ActionRun:
    """One run of the action. `github` holds the github context (base_ref, action_repository,
    ...), `env` the runner's environment (PATH with llmkit on it, GITHUB_STEP_SUMMARY, ...)."""

    workspace: Path
    temp: Path
    env: dict[str, str]
    inputs: dict[str, str] = field(default_factory=dict)
    github: dict[str, str] = field(default_factory=dict)
    action: dict[str, Any] = field(default_factory=load_action)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    ran: list[StepRun] = field(default_factory=list)

    def value(self, name: str) -> str:
        """A context value (`inputs.token`, `steps.eval.outputs.exit-code`, ...)."""
        head, _, rest = name.partition(".")
        if head == "inputs":
            declared = self.action["inputs"]
            assert rest in declared, f"action.yml has no input {rest}"
            if rest in self.inputs:
                return self.inputs[rest]
            return self.fill(str(declared[rest].get("default", "")))
        if head == "github":
            return self.github.get(rest, "")
        if head == "runner":
            assert rest == "temp", name
            return str(self.temp)
        if head == "steps":
            step_id, outputs, key = rest.split(".", 2)
            assert outputs == "outputs", name
            return self.outputs.get(step_id, {}).get(key, "")
        raise AssertionError(f"unknown context {name}")

    def fill(self, text: str) -> str:
        """`${{ name }}` expressions in a value replaced by what they name."""
        return _EXPRESSION.sub(lambda m: self.value(m.group(1)), text)

    def condition(self, expression: str) -> bool:
        """An `if:` of the kinds action.yml uses: names compared with '' literals, && and ||."""
        text = _EXPRESSION.sub(lambda m: m.group(1), expression)
        text = _CONTEXT_NAME.sub(lambda m: repr(self.value(m.group(0))), text)
        text = text.replace("&&", " and ").replace("||", " or ")
        return bool(eval(text, {"__builtins__": {}}, {}))

    def steps(self) -> list[dict[str, Any]]:
        return list(self.action["runs"]["steps"])

    def run(self, skip: tuple[str, ...] = (INSTALL_STEP,)) -> int:
        """Every `run:` step in order; the exit code of the first that fails, else 0."""
        assert self.action["runs"]["using"] == "composite"
        for step in self.steps():
            if "run" not in step or step.get("name") in skip:
                continue
            if "if" in step and not self.condition(str(step["if"])):
                continue
            result = self.run_step(step)
            if result.returncode != 0:
                return result.returncode
        return 0

    def run_step(self, step: dict[str, Any]) -> StepRun:
        assert step.get("shell") == "bash", f"{step.get('name')}: composite steps name a shell"
        for key in ("run",):  # the injection rule: no expression inside a script
            assert "${{" not in step[key], f"{step.get('name')}: an expression in its script"
        output = self.temp / f"github-output-{len(self.ran)}"
        output.write_text("", "utf-8")
        env = {**self.env, "GITHUB_OUTPUT": str(output), "GITHUB_ACTION_PATH": str(PROJECT_ROOT)}
        env.update({k: self.fill(str(v)) for k, v in (step.get("env") or {}).items()})
        cwd = self.workspace / self.fill(str(step.get("working-directory", ".")))
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
        if "id" in step:
            lines = output.read_text("utf-8").splitlines()
            self.outputs[step["id"]] = dict(line.split("=", 1) for line in lines if "=" in line)
        result = StepRun(str(step.get("name", "")), proc.returncode, proc.stdout, proc.stderr)
        self.ran.append(result)
        return result

    def step(self, name: str) -> StepRun:
        [found] = [r for r in self.ran if r.name == name]
        return found

    def names(self) -> list[str]:
        return [r.name for r in self.ran]

    def log(self) -> str:
        """Everything the steps printed, for assertion messages."""
        return "\n".join(f"--- {r.name} ({r.returncode})\n{r.stdout}\n{r.stderr}" for r in self.ran)

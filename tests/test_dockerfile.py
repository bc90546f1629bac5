"""The Dockerfile, read statically (no docker here): a slim Python base, llmkit installed from the
checkout, a non-root user, `llmkit serve --ref ... --remote ...` as the command, a health check
on /healthz at the port it serves, and every variable it sets documented in docs/deploy.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, args = whole.partition(" ")
        found.append((name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def words(args: str) -> list[str]:
    """An exec-form (JSON array) or shell-form argument list as words."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(w, str) for w in value)
        return value
    return shlex.split(args)


def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text("utf-8"))


def test_it_builds_on_a_slim_python_and_installs_the_checkout() -> None:
    steps = dockerfile()
    bases = [args for name, args in steps if name == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", bases[0]), bases
    copied = [words(args)[:-1] for name, args in steps if name == "COPY"]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the checkout"
    assert ["llmkit"] in copied
    installs = [args for name, args in steps if name == "RUN" and "pip install" in args]
    assert len(installs) == 1 and re.search(r"pip install [^&]*\s\.(\s|$)", installs[0])
    assert any("git" in words(args) for name, args in steps if name == "RUN" and "apt-get" in args)


def test_it_runs_as_a_user_that_is_not_root() -> None:
    steps = dockerfile()
    users = [args for name, args in steps if name == "USER"]
    assert users, "no USER: the server would run as root"
    last = users[-1].split(":")[0]
    assert last not in ("root", "0")
    created = " ".join(args for name, args in steps if name == "RUN")
    assert re.search(rf"useradd\b[^&]*\b{re.escape(last)}\b", created), "the user is never created"
    # Nothing runs as root after the switch, and the command comes after it.
    names = [name for name, _ in steps]
    switched = len(names) - 1 - names[::-1].index("USER")
    assert "RUN" not in names[switched:]
    assert names.index("CMD") > switched


def test_its_command_serves_a_ref_from_a_remote() -> None:
    commands = [words(args) for name, args in dockerfile() if name in ("CMD", "ENTRYPOINT")]
    assert len(commands) == 1
    command = commands[0]
    assert command[:2] == ["llmkit", "serve"]
    assert "--ref" in command and command[command.index("--ref") + 1] == "main"
    assert "--remote" in command and command[command.index("--remote") + 1] == "origin"


def test_its_health_check_asks_healthz_on_the_served_port() -> None:
    steps = dockerfile()
    checks = [args for name, args in steps if name == "HEALTHCHECK"]
    assert len(checks) == 1
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for name, args in steps if name == "ENV")))
    assert "/healthz" in checks[0]
    assert f"127.0.0.1:{env['LLMKIT_PORT']}/healthz" in checks[0]
    assert env["LLMKIT_HOST"] == "0.0.0.0"  # reachable from outside the container
    exposed = [args for name, args in steps if name == "EXPOSE"]
    assert exposed == [env["LLMKIT_PORT"]]


def test_every_variable_it_sets_is_documented() -> None:
    steps = dockerfile()
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for name, args in steps if name == "ENV")))
    guide = (ROOT / "docs" / "deploy.md").read_text("utf-8")
    llmkit_names = [name for name in env if name.startswith("LLMKIT_")]
    assert llmkit_names
    missing = [name for name in llmkit_names if f"`{name}` | `{env[name]}`" not in guide]
    assert missing == [], f"not in docs/deploy.md's Environment table with its value: {missing}"
    readme = (ROOT / "README.md").read_text("utf-8")
    assert "docs/deploy.md" in readme and "Dockerfile" in readme

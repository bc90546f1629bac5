"""Plain functions the tests share: the environment for subprocesses, git, a repository made by
hand, a free port, a clock that tests move, polling, the `llmkit` command in-process and as a
real process, and a real `llmkit serve` on 127.0.0.1. Fixtures live in the modules
`tests/conftest.py` registers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import chdir, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import httpx
from click.testing import CliRunner, Result

from llmkit.config import Settings
from llmkit.runlog import RunLog
from llmkit.workspace import Workspace

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 60.0
SERVER_START_TIMEOUT_S = 90.0  # a bound for a loaded machine, not an expectation
SERVER_STOP_TIMEOUT_S = 30.0
POLL_TIMEOUT_S = 10.0

# The identity of the person who edits the repositories by hand in these tests.
AUTHOR_NAME = "Test Author"
AUTHOR_EMAIL = "author@example.com"

# Settings of the developer's shell that would change what llmkit does under test.
LEAKY_ENV = ("GITHUB_STEP_SUMMARY",)
LEAKY_PREFIX = ("LLMKIT_", "OTEL_")

T = TypeVar("T")

HELLO_PROMPT = """\
---
model: default
temperature: 0.7
---
<!-- role:system -->
You are a {{ personality }} assistant.

<!-- role:user -->
{{ question }}
"""

STATIC_PROMPT = """\
---
model: default
---
<!-- role:system -->
You are terse.
"""


# -- environment and git ---------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for git and llmkit subprocesses: no LLMKIT_* settings or CI summary leak
    in, git asks nothing and reads no system config, and llmkit imports from this checkout."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(LEAKY_PREFIX) and k not in LEAKY_ENV
    }
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def git(cwd: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    """Run git in `cwd`; stdout without its trailing newline (fails the test on an error)."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=input,
        env=clean_env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout.rstrip("\n")


def git_bytes(cwd: Path, *args: str) -> bytes:
    """Run git in `cwd`; its stdout as bytes, untouched."""
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        env=clean_env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


class Repo:
    """A real git repository in a temporary folder, with a few conveniences for tests."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def git(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return git(self.root, *args, check=check, input=input)

    def identify(self, **sections: Mapping[str, str]) -> None:
        """A local identity and no signing, whatever the developer's config says, and any
        further `sections` ({"core": {"hooksPath": ...}}). Appended to .git/config in one write,
        as `git config` would set them (the last value of a key wins): a `git config` process
        per key cost more than the rest of a small test's setup."""
        wanted = {
            "user": {"name": AUTHOR_NAME, "email": AUTHOR_EMAIL},
            "commit": {"gpgsign": "false"},
            **sections,
        }
        text = "".join(
            f"[{section}]\n" + "".join(f"\t{key} = {value}\n" for key, value in keys.items())
            for section, keys in wanted.items()
        )
        with (self.root / ".git" / "config").open("a", encoding="utf-8") as config:
            config.write(text)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, text: str | bytes) -> Path:
        """Write a file (creating folders); bytes are written as they are."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return target

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text("utf-8")

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()

    def commit(self, message: str = "change", *paths: str) -> str:
        """Stage `paths` (everything when none are given), commit, and return the new HEAD."""
        self.git("add", "-A", "--", *(paths or (".",)))
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def status(self) -> str:
        return self.git("status", "--porcelain", "--untracked-files=all")

    def log(self, *args: str) -> list[str]:
        out = self.git("log", "--format=%H", *args)
        return out.splitlines() if out else []


MakeRepo = Callable[..., Repo]


def colleague_clone(repo: Repo, tmp_path: Path) -> Repo:
    """A bare `origin` cloned from `repo` (which then tracks origin/main) and a colleague's
    clone of it, with an identity of their own ("Colleague"): what the colleague commits and
    pushes, a `git pull` in `repo` brings in."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo.root), str(origin))
    repo.git("remote", "add", "origin", str(origin))
    repo.git("fetch", "-q", "origin")
    repo.git("branch", "-q", "--set-upstream-to=origin/main")
    colleague = Repo(tmp_path / "colleague")
    git(tmp_path, "clone", "-q", str(origin), str(colleague.root))
    colleague.identify(user={"name": "Colleague", "email": "colleague@example.com"})
    return colleague


def init_repo(
    root: Path, files: Mapping[str, str | bytes] | None = None, *, commit: bool = True
) -> Repo:
    """`git init -b main` in `root` with a local identity, a `.gitignore` for `.llmkit/`,
    `files`, and (unless `commit` is false: the branch stays unborn) one "Initial commit"."""
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo(root)
    repo.git("init", "-q", "-b", "main", "--template=")  # no sample hooks to copy: faster
    repo.identify(core={"hooksPath": ".git/hooks"})
    repo.write(".gitignore", ".llmkit/\n")
    for rel, text in (files or {}).items():
        repo.write(rel, text)
    if commit:
        repo.commit("Initial commit")
    return repo


@contextmanager
def opened_workspace(root: Path) -> Iterator[Workspace]:
    """A Workspace on the repository at `root` for a `with` block, closed at its end (also when
    a check inside fails), as a command run there would open it."""
    ws = Workspace(Settings.resolve(root))
    try:
        yield ws
    finally:
        ws.close()


def put_unshaped_row(runlog: RunLog, **values: object) -> None:
    """Hand the run log's writer a row as it stands, past the shaping `log` does (what a bug
    before the writer would send): `values` over plain values for the NOT NULL columns, every
    other column NULL."""
    from llmkit.runlog_record import COLUMNS

    row: dict[str, object] = dict.fromkeys(COLUMNS)
    plain = dict(trace_id="unshaped", model="m", status="ok", stream=0, draft=0, source="api")
    row.update({**plain, **values})
    runlog._writer.put(tuple(row[name] for name in COLUMNS))


# -- waiting ---------------------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when a test says so (for lifetimes and intervals: no sleeps)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A port nothing listens on now (another process may still take it before we bind it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(
    check: Callable[[], T],
    what: str | None = None,
    *,
    timeout_s: float = POLL_TIMEOUT_S,
    every_s: float = 0.02,
    ignore: tuple[type[Exception], ...] = (),
) -> T | None:
    """Call `check` until it returns something truthy or `timeout_s` passes, and return its last
    result (None when its last call raised one of `ignore`, e.g. NotFound until an index catches
    up). With `what`, running out of time fails the test: "timed out waiting for WHAT"."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result: T | None = check()
        except ignore as exc:
            result, last_error = None, exc
        if result or time.monotonic() >= deadline:
            break
        time.sleep(every_s)
    if what is not None and not result:
        raise AssertionError(
            f"timed out waiting for {what} ({timeout_s} s)"
            + (f"; last error: {last_error}" if last_error else "")
        )
    return result


# -- the llmkit command ----------------------------------------------------------------------


def invoke(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    input: str | None = None,
) -> Result:
    """`llmkit ARGS` in-process through click's CliRunner, in `cwd`, with a clean environment
    (no LLMKIT_* settings, no colour, a wide terminal) plus `env` (None unsets). stdout and
    stderr are kept apart (`result.stdout`, `result.stderr`) and neither is a terminal; an
    exception the command does not turn into an exit code fails the test with its traceback."""
    from llmkit.cli import main

    unset: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(LEAKY_PREFIX) or k in LEAKY_ENV
    }
    overrides = {**unset, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    with chdir(cwd) if cwd is not None else nullcontext():
        return CliRunner().invoke(
            main, [str(a) for a in args], env=overrides, input=input, catch_exceptions=False
        )


def run_llmkit(
    *args: str | Path,
    cwd: Path = PROJECT_ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """`python -m llmkit ARGS` as a real process in `cwd` (stdout and stderr are pipes, never a
    terminal): for the checks that need the entry point, real exit codes or a real kill."""
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**clean_env(NO_COLOR="1", COLUMNS="200"), **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# -- llmkit serve ----------------------------------------------------------------------------


class ServerProcess:
    """A real `python -m llmkit serve` on 127.0.0.1; its stdout and stderr go to files in
    `log_dir`, so nothing blocks on a full pipe and the output can be read at any time."""

    def __init__(self, repo: Path, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.repo = repo
        self.port = port
        self.proc = proc
        self.log = log
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    @property
    def db_path(self) -> Path:
        return self.repo / ".llmkit" / "llmkit.db"

    @property
    def admin_key(self) -> str:
        """The admin key the first start created (saved under .llmkit/)."""
        return (self.repo / ".llmkit" / "admin.key").read_text("utf-8").strip()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def stdout(self) -> str:
        return self.log.with_suffix(".stdout").read_text("utf-8", errors="replace")

    def stderr(self) -> str:
        return self.log.with_suffix(".stderr").read_text("utf-8", errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def answers(self) -> bool:
        """Whether /healthz answers 200. A port that takes no connection yet is told by a bare
        connect first: start_server asks this every 20 ms while the server starts, and an
        HTTP client's set-up (its TLS context) costs a thousand times more CPU than a connect,
        enough to keep a core busy for the whole start."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        try:
            return self.http.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def create_key(self, name: str, scope: str = "run") -> str:
        """A new API key, created over HTTP with the admin key, as a person would."""
        made = self.http.post(
            f"{self.v1}/ui/settings/api-keys",
            headers=self.headers(),
            json={"name": name, "scope": scope},
        )
        assert made.status_code == 201, made.text
        return str(made.json()["key"])

    def health(self) -> Any:
        """GET /healthz as JSON (through the server's one client: polls ask it often)."""
        return self.http.get(f"{self.url}/healthz").json()

    @property
    def http(self) -> httpx.Client:
        """One HTTP client kept for this server, for a test's own calls to it: `httpx.get()`
        and the like build a client, and with it a TLS context, per call (about 45 ms of CPU)."""
        if self._http is None:
            self._http = httpx.Client(timeout=30)
        return self._http

    def exited_or_answers(self) -> bool:
        return self.proc.poll() is not None or self.answers()

    def terminate(self, timeout: float = SERVER_STOP_TIMEOUT_S) -> int:
        """SIGTERM, then its exit code; a server that does not stop in time is killed and fails."""
        self._close_http()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"llmkit serve did not stop within {timeout} s of SIGTERM:\n{self.stderr()}"
                ) from None
        return int(self.proc.returncode)

    def _close_http(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def kill(self) -> None:
        self._close_http()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(SERVER_STOP_TIMEOUT_S)


def start_server(
    repo: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    watch: bool = False,
    flags: tuple[str, ...] = ("--log-level", "warning"),
) -> ServerProcess:
    """Start `llmkit serve --repo REPO` (with its watcher when `watch`) on a free port and wait
    (bounded) until it answers; a port taken before the server bound it is retried."""
    for _ in range(3):
        port = free_port()
        log = log_dir / f"serve-{port}"
        out_path, err_path = log.with_suffix(".stdout"), log.with_suffix(".stderr")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llmkit",
                    "serve",
                    "--repo",
                    str(repo),
                    "--port",
                    str(port),
                    *([] if watch else ["--no-watch"]),
                    *flags,
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT,
                env=dict(env) if env is not None else clean_env(),
            )
        server = ServerProcess(repo, port, proc, log)
        poll(server.exited_or_answers, timeout_s=SERVER_START_TIMEOUT_S)
        if proc.poll() is None and server.answers():
            return server
        timed_out = proc.poll() is None
        server.kill()
        if timed_out:
            raise AssertionError(
                f"llmkit serve did not answer within {SERVER_START_TIMEOUT_S} s:\n{server.output()}"
            )
        if "address already in use" not in server.stderr().lower():
            raise AssertionError(f"llmkit serve exited with {proc.returncode}:\n{server.output()}")
    raise AssertionError("llmkit serve found no free port in three tries")


@contextmanager
def serving(
    repo: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    watch: bool = False,
    flags: tuple[str, ...] = ("--log-level", "warning"),
) -> Iterator[ServerProcess]:
    """`start_server` for a `with` block: killed at the end unless the test stopped it."""
    server = start_server(repo, log_dir, env, watch=watch, flags=flags)
    try:
        yield server
    finally:
        server.kill()

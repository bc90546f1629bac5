"""Lint and the core CLI commands: init, index, lint, history, show, diff, render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.lint import Problem, lint_prompt_text, lint_repo
from tests.helpers import HELLO_PROMPT, PROJECT_ROOT, MakeRepo, Repo, invoke, run_llmkit

HELLO_V2 = HELLO_PROMPT.replace("{{ question }}", "{{ question }}\nAnswer in one line.")

BROKEN_FILES: dict[str, str | bytes] = {
    "prompts/unknown-key.md": "---\nmodel: m\ncolour: red\n---\nhi\n",
    "prompts/bad-yaml.md": "---\nmodel: m\n  nested: wrong\n---\nhi\n",
    "prompts/bad-role.md": (
        "---\nmodel: m\n---\n<!-- role:system -->\nok\n<!-- role:robot -->\nhi\n"
    ),
    "prompts/open-tag.md": (
        "---\nmodel: m\n---\n<!-- role:system -->\nok\n<!-- role:user -->\nline\n"
        "{% if x %}\nnever closed\n"
    ),
    "prompts/open-print.md": "---\nmodel: m\n---\n<!-- role:user -->\n{{ question\n",
    "prompts/latin1.md": b"---\nmodel: m\n---\nline four\ncaf\xe9\n",
    "prompts/fine.md": "---\nmodel: m\n---\n<!-- role:user -->\n{{ q }}\n",
}

EXPECTED_ERRORS = {
    ("prompts/unknown-key.md", 3, "Unknown frontmatter key 'colour'"),
    ("prompts/bad-yaml.md", 3, "Malformed frontmatter"),
    ("prompts/bad-role.md", 6, "Unknown role marker 'robot'"),
    ("prompts/open-tag.md", 8, "Template syntax error"),
    ("prompts/open-print.md", 5, "Template syntax error"),
    ("prompts/latin1.md", 5, "not UTF-8"),
}


@pytest.fixture
def history_repo(repo: Repo) -> Repo:
    """hello has two committed versions."""
    repo.write("prompts/hello.md", HELLO_V2)
    repo.commit("Ask for one line")
    return repo


# -- lint ------------------------------------------------------------------------------------------


def test_lint_reports_each_problem_once_with_file_and_line(make_repo: MakeRepo) -> None:
    repo = make_repo("broken", BROKEN_FILES)
    problems = lint_repo(repo.root)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == len(EXPECTED_ERRORS)
    for path, line, needle in EXPECTED_ERRORS:
        [problem] = [p for p in errors if p.path == path]
        assert problem.line == line, problem
        assert needle in problem.message
        assert "\n" not in problem.message


def test_lint_command_prints_path_line_message_and_exits_1(make_repo: MakeRepo) -> None:
    repo = make_repo("broken", BROKEN_FILES)
    result = invoke("lint", "--repo", repo.root)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(EXPECTED_ERRORS)
    for path, line, needle in EXPECTED_ERRORS:
        assert any(out.startswith(f"{path}:{line}: ") and needle in out for out in lines), (
            path,
            lines,
        )
    assert "6 error(s), 0 warning(s)" in result.stderr


def test_lint_github_format_writes_annotations(make_repo: MakeRepo) -> None:
    repo = make_repo("broken", BROKEN_FILES)
    result = invoke("lint", "--repo", repo.root, "--format", "github")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert (
        "::error file=prompts/unknown-key.md,line=3::Unknown frontmatter key 'colour'"
        in "\n".join(lines)
    )
    assert all(line.startswith("::error file=prompts/") for line in lines)
    assert len(lines) == len(EXPECTED_ERRORS)


def test_lint_json(make_repo: MakeRepo) -> None:
    repo = make_repo("broken", BROKEN_FILES)
    result = invoke("lint", "--repo", repo.root, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert {(d["path"], d["line"]) for d in data} == {(p, n) for p, n, _ in EXPECTED_ERRORS}
    assert {d["severity"] for d in data} == {"error"}


def test_lint_exits_0_on_a_clean_repository_and_on_warnings(repo: Repo) -> None:
    result = invoke("lint", "--repo", repo.root)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "0 error(s)" in result.stderr
    repo.write("prompts/empty.md", "---\nmodel: m\n---\n")
    result = invoke("lint", "--repo", repo.root)
    assert result.exit_code == 0
    assert result.stdout == "prompts/empty.md:1: Prompt has no messages\n"


def test_lint_reports_unportable_keys_oversized_files_bombs_and_deep_templates(
    make_repo: MakeRepo,
) -> None:
    ok = "---\nmodel: m\n---\nhi\n"
    repo = make_repo(
        "unportable",
        {
            "llmkit.yaml": "models:\n  default: echo\nlimits:\n  prompt_file_bytes: 10000\n",
            "prompts/hello.md": ok,
            "prompts/Hello.md": ok,
            "prompts/support/a.md": ok,
            "prompts/Support/b.md": ok,
            "prompts/con.md": ok,
            "prompts/dir./x.md": ok,
            "prompts/big.md": ok + "x" * 10_000 + "\n",
            "prompts/bomb.md": "---\nmodel: m\ntags: &a [x, x]\ndescription: [*a, *a]\n---\nhi\n",
            "prompts/deep.md": "---\nmodel: m\n---\nfine\n{{ " + "(" * 3000 + ")" * 3000 + " }}\n",
            "prompts/withnul.md": "---\nmodel: m\n---\nfine\nnot \x00 fine\n",
        },
    )
    found = {(p.path, p.line, p.message.split(";")[0].split(" (")[0]) for p in lint_repo(repo.root)}
    assert found == {
        ("prompts/hello.md", 1, "Prompt key 'hello' differs only in case from 'Hello'"),
        ("prompts/support/a.md", 1, "Prompt key 'support/a' differs only in case from 'Support/b'"),
        ("prompts/con.md", 1, "Invalid prompt key 'con': 'con' is a device name on Windows"),
        (
            "prompts/dir./x.md",
            1,
            (
                "Invalid prompt key 'dir./x': segment 'dir.' ends with '.', which Windows"
                " drops from file names"
            ),
        ),
        ("prompts/big.md", 1, "File is 10,021 bytes, over the limit of 10,000 for a prompt file"),
        (
            "prompts/bomb.md",
            3,
            "Frontmatter: YAML anchor &a is not allowed: write the value out in full",
        ),
        (
            "prompts/deep.md",
            5,
            (
                "Template syntax error: the template nests too deeply, or an expression is too"
                " long, to compile"
            ),
        ),
        ("prompts/withnul.md", 5, "Prompt text holds a NUL character"),
    }


def test_lint_names_a_bad_file_name_and_still_checks_its_content() -> None:
    problems = lint_prompt_text("prompts/bad name.md", b"---\ncolour: x\n---\n")
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (1, "Invalid prompt key 'bad name'"),
        (2, "Unknown frontmatter key 'colour' (known keys"),
    ]


@pytest.mark.parametrize("key", ["stream", "chat", "chat/stream"])
def test_lint_warns_that_the_execution_routes_words_are_reserved_keys(key: str) -> None:
    [problem] = lint_prompt_text(f"prompts/{key}.md", b"Hi.\n")
    assert (problem.severity, problem.line) == ("warning", 1)
    assert problem.message.startswith(f"Prompt key {key!r} is reserved:")
    assert f"/v1/ui/prompts/execute/{key}" in problem.message
    assert lint_prompt_text("prompts/streams.md", b"Hi.\n") == []
    assert lint_prompt_text("prompts/team/chat.md", b"Hi.\n") == []


def test_github_annotations_escape_what_would_break_them() -> None:
    problem = Problem("prompts/a,b:c.md", 2, "50% done\nnext line")
    assert problem.github() == "::error file=prompts/a%2Cb%3Ac.md,line=2::50%25 done%0Anext line"
    assert str(problem) == "prompts/a,b:c.md:2: 50% done\nnext line"


def test_lint_outside_a_repository_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("lint", "--repo", tmp_path)
    assert result.exit_code == 2
    assert "not a git repository" in result.stderr


# -- init ------------------------------------------------------------------------------------------


def test_init_scaffolds_and_commits_then_keeps_everything_on_a_second_run(tmp_path: Path) -> None:
    target = tmp_path / "new-prompts"
    result = invoke("init", target)
    assert result.exit_code == 0, result.output
    for rel in ("llmkit.yaml", "prompts/hello.md", "evals/hello/basic.yaml", ".gitignore"):
        assert (target / rel).is_file()
        assert f"created {rel}" in result.stdout
    repo = Repo(target)
    assert len(repo.log()) == 1
    assert repo.status() == ""
    assert repo.git("symbolic-ref", "--short", "HEAD") == "main"
    lint = invoke("lint", "--repo", target)
    assert lint.exit_code == 0, lint.output

    head = repo.head()
    again = invoke("init", target)
    assert again.exit_code == 0, again.output
    assert "created" not in again.stdout
    assert "skipped prompts/hello.md (prompts/ already holds prompts)" in again.stdout
    assert "skipped llmkit.yaml (exists" in again.stdout
    assert repo.head() == head
    assert repo.status() == ""


def test_init_in_an_existing_repository_commits_only_what_it_created(make_repo: MakeRepo) -> None:
    repo = make_repo("code", {"app.py": "print('hi')\n"})
    repo.write(".gitignore", ".llmkit/\n*.pyc\n")
    repo.commit("ignore pyc")
    repo.write("staged.py", "x = 1\n")
    repo.git("add", "staged.py")
    result = invoke("init", repo.root)
    assert result.exit_code == 0, result.output
    committed = repo.git("show", "--name-only", "--format=", "HEAD").splitlines()
    assert sorted(committed) == [
        ".github/workflows/llmkit.yml",
        ".pre-commit-config.yaml",
        "LLMKIT.md",
        "README.md",
        "evals/hello/basic.yaml",
        "llmkit.yaml",
        "prompts/hello.md",
    ]
    assert repo.status() == "A  staged.py"
    assert repo.read(".gitignore") == ".llmkit/\n*.pyc\n"


# -- index -----------------------------------------------------------------------------------------


def test_index_and_rebuild(history_repo: Repo) -> None:
    repo = history_repo
    repo.write("prompts/draft.md", "---\nmodel: m\n---\n<!-- role:user -->\nwip\n")
    result = invoke("index", "--repo", repo.root, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prompts"] == [
        {"id": 1, "key": "hello", "version": 2, "draft": False},
        {"id": 2, "key": "static", "version": 1, "draft": False},
        {"id": 3, "key": "draft", "version": 1, "draft": True},
    ]
    again = json.loads(invoke("index", "--repo", repo.root, "--json").stdout)
    assert again["rebuilt"] is False and again["commits"] == 0 and again["changed"] == []
    rebuilt = json.loads(invoke("index", "--rebuild", "--repo", repo.root, "--json").stdout)
    assert rebuilt["rebuilt"] is True and rebuilt["commits"] == 2
    assert rebuilt["prompts"] == data["prompts"]
    # Two commits of hello, one of static, and the draft's working-tree version.
    assert rebuilt["counts"] == {"prompts": 3, "versions": 4, "commits": 2}
    summary = invoke("index", "--repo", repo.root)
    assert summary.exit_code == 0
    lines = summary.stdout.splitlines()
    assert len(lines) == 1, summary.stdout
    assert lines[0].startswith("Index up to date: 3 prompts, 4 versions, 2 commits in ")
    assert "hello" not in summary.stdout
    rebuilt_line = invoke("index", "--rebuild", "--repo", repo.root).stdout.strip()
    assert rebuilt_line.startswith("Rebuilt the index: 3 prompts, 4 versions, 2 commits (2 new)")


def test_the_repository_defaults_to_the_current_directory(
    history_repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(history_repo.root / "prompts")
    result = invoke("history", "hello", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2


def test_outside_any_repository_without_repo_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMKIT_REPO", raising=False)
    result = invoke("index")
    assert result.exit_code == 2
    assert "not inside a git repository" in result.stderr


# -- history, show, diff ---------------------------------------------------------------------------


def test_history_json(history_repo: Repo) -> None:
    result = invoke("history", "hello", "--repo", history_repo.root, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    shas = list(reversed(history_repo.log("--", "prompts/hello.md")))
    assert [(r["number"], r["sha"], r["draft"]) for r in rows] == [
        (1, shas[0], False),
        (2, shas[1], False),
    ]
    assert [r["message"] for r in rows] == ["Initial commit", "Ask for one line"]
    assert {r["author"] for r in rows} == {"Test Author"}
    assert {r["author_email"] for r in rows} == {"author@example.com"}
    assert all(r["date"].endswith("Z") for r in rows)
    assert "+You are a {{ personality }} assistant.\n" in rows[0]["diff"]
    assert "+Answer in one line.\n" in rows[1]["diff"]
    assert "-You are" not in rows[1]["diff"]


def test_history_shows_a_draft_last(history_repo: Repo) -> None:
    history_repo.write("prompts/hello.md", HELLO_V2 + "\nwork in progress\n")
    rows = json.loads(invoke("history", "hello", "--repo", history_repo.root, "--json").stdout)
    assert [(r["number"], r["sha"], r["draft"]) for r in rows][-1] == (3, None, True)
    assert "+work in progress\n" in rows[-1]["diff"]
    text = invoke("history", "hello", "--repo", history_repo.root)
    assert text.exit_code == 0
    assert "draft" in text.stdout and "Ask for one line" in text.stdout


def test_show_by_number_sha_and_served(history_repo: Repo) -> None:
    root = history_repo.root
    assert invoke("show", "hello@1", "--repo", root).stdout == HELLO_PROMPT
    assert invoke("show", "hello", "--repo", root).stdout == HELLO_V2
    first = history_repo.log("--", "prompts/hello.md")[-1]
    result = invoke("show", f"hello@{first[:8]}", "--repo", root, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["key"], data["version_number"], data["sha"], data["content"]) == (
        "hello",
        1,
        first,
        HELLO_PROMPT,
    )
    assert data["prompt_type"] == "dynamic_both"
    assert data["user"] == "{{ question }}"


def test_diff_between_two_versions(history_repo: Repo) -> None:
    result = invoke("diff", "hello", "1", "2", "--repo", history_repo.root)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("--- prompts/hello.md@1\n+++ prompts/hello.md@2\n")
    assert "+Answer in one line.\n" in result.stdout
    assert invoke("diff", "hello", "2", "--repo", history_repo.root).stdout == ""


# -- render ----------------------------------------------------------------------------------------


def test_render_with_vars_and_a_json_file(history_repo: Repo, tmp_path: Path) -> None:
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps({"personality": "calm", "question": "from the file"}))
    result = invoke(
        "render",
        "hello@1",
        "--repo",
        history_repo.root,
        "--vars-json",
        variables,
        "--var",
        "question=What? a=b",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"role": "system", "content": "You are a calm assistant."},
        {"role": "user", "content": "What? a=b"},
    ]
    pretty = invoke(
        "render",
        "hello",
        "--repo",
        history_repo.root,
        "--var",
        "personality=<b>&",
        "--var",
        "question=q",
    )
    assert pretty.exit_code == 0
    assert "You are a <b>& assistant." in pretty.stdout


def test_render_names_every_missing_variable(history_repo: Repo) -> None:
    result = invoke("render", "hello", "--repo", history_repo.root, "--json")
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == "Error: prompts/hello.md:6: Missing variables: personality, question"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["show", "nope"], 1, "No prompt found with key 'nope'"),
        (["history", "nope"], 1, "'nope'"),
        (["diff", "nope", "1", "2"], 1, "'nope'"),
        (["render", "nope"], 1, "'nope'"),
        (["show", "hello@99"], 1, "Prompt 'hello' has no version 99"),
        (["show", "hello@no-such-branch"], 1, "no version 'no-such-branch'"),
        (["show", "../etc/passwd"], 1, "Invalid prompt key"),
        (["render", "hello", "--var", "novalue"], 2, "--var takes NAME=VALUE"),
        (["render", "hello", "--vars-json", "/nonexistent/vars.json"], 2, "Cannot read variables"),
    ],
)
def test_errors_exit_with_a_message_naming_the_value(
    history_repo: Repo, args: list[str], code: int, needle: str
) -> None:
    result = invoke(*args, "--repo", history_repo.root)
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("Error: ")
    assert needle in result.stderr
    assert "Traceback" not in result.output


# -- real processes --------------------------------------------------------------------------------


def test_a_real_process_shows_a_version_and_exits_1_on_unknown_keys(history_repo: Repo) -> None:
    shown = run_llmkit("show", "hello@1", "--repo", history_repo.root)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == HELLO_PROMPT
    missing = run_llmkit("show", "nope", "--repo", history_repo.root)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: No prompt found with key 'nope'"


HEAVY = ("litellm", "fastapi")
# GitPython runs git for the commands that read or write a repository; `--help` opens none.
HEAVY_FOR_HELP = (*HEAVY, "git", "gitdb")

MODULES_AFTER = """\
import json, runpy, sys
out, *args = sys.argv[1:]
sys.argv = ["llmkit", *args]
code = 0
try:
    runpy.run_module("llmkit", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def modules_after(tmp_path: Path, *args: str | Path) -> tuple[object, list[str]]:
    script, out = tmp_path / "modules_after.py", tmp_path / "modules.json"
    script.write_text(MODULES_AFTER)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *map(str, args)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.exists(), proc.stderr
    data = json.loads(out.read_text())
    return data["code"], data["modules"]


def test_help_does_not_import_litellm_fastapi_or_gitpython(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "llmkit", "--help"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "lint" in proc.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "llmkit.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY_FOR_HELP}
    code, modules = modules_after(tmp_path, "--help")
    assert code == 0
    assert not [m for m in modules if m.split(".")[0] in HEAVY_FOR_HELP]


@pytest.mark.parametrize("broken", [False, True])
def test_lint_does_not_import_litellm_or_fastapi(
    make_repo: MakeRepo, tmp_path: Path, broken: bool
) -> None:
    repo = make_repo(
        "lintme", BROKEN_FILES if broken else {"prompts/a.md": "<!-- role:user -->\nhi\n"}
    )
    repo.write("evals/a/basic.yaml", "name: basic\nassert:\n- type: contains\n  value: hi\n")
    code, modules = modules_after(tmp_path, "lint", "--repo", repo.root)
    assert code == (1 if broken else 0)
    assert "llmkit.lint" in modules
    assert not [m for m in modules if m.split(".")[0] in HEAVY]

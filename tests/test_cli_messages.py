"""What the command line says: every lint problem of a file at once, one location format for a
template error everywhere, JSON variables and dotted missing names, headers and empty results,
the first admin key, trace ids by prefix, and how fast `llmkit serve` stops."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmkit.cli import main
from llmkit.lint import lint_prompt_text
from tests.helpers import MakeRepo, Repo, invoke, opened_workspace, serving

# -- lint: every problem of a file in one run ----------------------------------------------------

MANY_PROBLEMS = """\
---
model: echo
temprature: 0.5
max_tokens: -1
colour: red
type: weird
---
<!-- role:system -->
Hello {{ name }}
<!-- role:robot -->
hi
<!-- role:user -->
{% if y %}
"""


def test_lint_reports_every_problem_of_one_file_in_one_run(make_repo: MakeRepo) -> None:
    repo = make_repo("many", {"prompts/many.md": MANY_PROBLEMS})
    result = invoke("lint", "--repo", repo.root)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    expected = [
        (
            "prompts/many.md:3: ",
            "Unknown frontmatter key 'temprature'; did you mean 'temperature'?",
        ),
        ("prompts/many.md:4: ", "max_tokens must be at least 1, got -1"),
        ("prompts/many.md:5: ", "Unknown frontmatter key 'colour' (known keys: model,"),
        ("prompts/many.md:6: ", "type must be one of static, dynamic_system, dynamic_both"),
        ("prompts/many.md:10: ", "Unknown role marker 'robot'"),
        ("prompts/many.md:13: ", "Template syntax error: Unexpected end of template"),
    ]
    assert len(lines) == len(expected), lines
    for line, (where, message) in zip(lines, expected):
        assert line.startswith(where + message), line
    assert "6 error(s), 0 warning(s)" in result.stderr


def test_lint_checks_the_body_even_when_the_frontmatter_cannot_be_read() -> None:
    text = b"---\nmodel: m\n  nested: wrong\n---\ncaf\xe9\n<!-- role:user -->\n{% if q %}\n"
    problems = lint_prompt_text("prompts/a.md", text)
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (3, "Malformed frontmatter"),
        (5, "File is not UTF-8 text (invalid byte at offset 36)"),
        (7, "Template syntax error"),
    ]


def test_a_misspelt_key_is_still_refused_when_served(repo: Repo) -> None:
    """parse() keeps refusing the file, with the first problem and its suggestion."""
    from llmkit.errors import PromptFormatError
    from llmkit.promptfile import parse

    try:
        parse("---\nmax_token: 5\n---\nhi\n", "prompts/a.md")
    except PromptFormatError as exc:
        assert exc.message.startswith(
            "prompts/a.md:2: Unknown frontmatter key 'max_token'; did you mean 'max_tokens'?"
        )
    else:
        raise AssertionError("a misspelt key was accepted")


# -- one location for a template error, everywhere ---------------------------------------------

# Line 7 of the file is line 3 of its system section.
UNCLOSED_IF = "---\nmodel: echo\n---\n<!-- role:system -->\nHello\nthere\n{% if x %}\nnever\n"
READS_ATTRIBUTES = (
    "---\nmodel: echo\n---\n<!-- role:system -->\nHello.\n"
    "Hi {{ user.profile.name }}, formal={{ formal }}\n{% if formal %}FORMAL{% endif %}\n"
)


def test_a_template_error_has_one_location_in_render_lint_run_and_the_api(
    make_repo: MakeRepo,
) -> None:
    from tests.api_fixtures import running_api

    repo = make_repo("loc", {"prompts/undef.md": UNCLOSED_IF})
    where = "prompts/undef.md:7: Template syntax error: Unexpected end of template."
    lint = invoke("lint", "--repo", repo.root)
    assert lint.stdout.startswith(where)
    for command in ("render", "run"):
        result = invoke(command, "undef", "--repo", repo.root)
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: " + where), (command, result.stderr)
    with running_api(repo.root) as api:
        response = api.client.post(
            "/v1/chat/completions", headers=api.run, json={"model": "undef", "messages": []}
        )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(where)


def test_a_missing_attribute_is_named_by_its_path_with_the_file_line(make_repo: MakeRepo) -> None:
    from tests.api_fixtures import running_api

    repo = make_repo("attr", {"prompts/attr.md": READS_ATTRIBUTES})
    result = invoke(
        "render",
        "attr",
        "--repo",
        repo.root,
        "--var",
        'user:={"profile": {}}',
        "--var",
        "formal:=false",
    )
    assert result.exit_code == 1
    assert result.stderr == "Error: prompts/attr.md:6: Missing variables: user.profile.name\n"
    result = invoke("render", "attr", "--repo", repo.root, "--var", 'user:={"a": 1}')
    assert result.stderr == "Error: prompts/attr.md:6: Missing variables: formal, user.profile\n"
    with running_api(repo.root) as api:
        response = api.client.post(
            "/v1/chat/completions",
            headers=api.run,
            json={"model": "attr", "messages": [], "variables": {"user": {"a": 1}, "formal": 0}},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "prompts/attr.md:6: Missing variables: user.profile"
    assert error["code"] == "missing_variables"


def test_a_missing_item_in_a_loop_is_named_by_the_expression_that_read_it() -> None:
    from llmkit.errors import MissingVariables
    from llmkit.render import render

    source = "{% for u in users %}{{ u.name }} {{ u['e-mail'] }}{% endfor %}{{ rows[0].id }}"
    try:
        render(source, {"users": [{"name": "a"}], "rows": [{}]})
    except MissingVariables as exc:
        assert exc.names == ["rows[0].id", "u['e-mail']"]
        assert exc.message == "Missing variables: rows[0].id, u['e-mail']"
    else:
        raise AssertionError("missing items were not reported")


# -- --var takes JSON values -------------------------------------------------------------------


def test_var_takes_text_with_equals_and_json_with_colon_equals(make_repo: MakeRepo) -> None:
    repo = make_repo("vars", {"prompts/attr.md": READS_ATTRIBUTES})
    user = ["--var", 'user:={"profile": {"name": "Ada"}}']
    as_json = invoke(
        "render", "attr", "--repo", repo.root, *user, "--var", "formal:=false", "--json"
    )
    assert as_json.exit_code == 0, as_json.stderr
    content = json.loads(as_json.stdout)[0]["content"]
    assert content == "Hello.\nHi Ada, formal=false\n"
    as_text = invoke(
        "render", "attr", "--repo", repo.root, *user, "--var", "formal=false", "--json"
    )
    assert json.loads(as_text.stdout)[0]["content"] == "Hello.\nHi Ada, formal=false\nFORMAL"


def test_var_with_bad_json_is_a_usage_error_naming_it(make_repo: MakeRepo) -> None:
    repo = make_repo("badvars", {"prompts/attr.md": READS_ATTRIBUTES})
    for bad, needle in (
        ("formal:=nope", "--var formal:= takes a JSON value"),
        (":=1", "--var takes NAME=VALUE or NAME:=JSON, got ':=1'"),
        ("formal:=" + "[" * 100, "nests more than 64 levels"),
        ("novalue", "--var takes NAME=VALUE or NAME:=JSON, got 'novalue'"),
    ):
        result = invoke("render", "attr", "--repo", repo.root, "--var", bad)
        assert result.exit_code == 2, bad
        assert needle in result.stderr, (bad, result.stderr)


# -- keys list, diff with no changes -----------------------------------------------------------


def test_keys_list_has_a_header_row(repo: Repo) -> None:
    empty = invoke("keys", "list", "--repo", repo.root)
    assert empty.exit_code == 0
    assert empty.stdout == ""
    assert "No API keys yet" in empty.stderr
    invoke("keys", "create", "app", "--repo", repo.root)
    invoke("keys", "create", "ops team", "--admin", "--repo", repo.root)
    invoke("keys", "revoke", "1", "--repo", repo.root)
    # a revoked key is gone from the list, as from the web UI's, and is counted aside
    active = invoke("keys", "list", "--repo", repo.root)
    assert [line.split()[:2] for line in active.stdout.splitlines()[1:]] == [["2", "admin"]]
    assert "1 revoked key(s) not shown: --include-revoked shows them." in active.stderr
    lines = invoke("keys", "list", "--include-revoked", "--repo", repo.root).stdout.splitlines()
    assert lines[0].split() == ["ID", "SCOPE", "PREFIX", "NAME", "STATE", "LAST", "USED"]
    assert len(lines) == 3
    # Every row's columns start where the header's do.
    for column in ("SCOPE", "PREFIX", "NAME", "STATE", "LAST USED"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines[1:])
    assert lines[1].split()[:2] == ["1", "run"] and lines[2].split()[:2] == ["2", "admin"]
    assert "revoked" in lines[1] and "active" in lines[2] and "ops team" in lines[2]


def test_diff_without_changes_says_so(repo: Repo) -> None:
    result = invoke("diff", "hello", "1", "1", "--repo", repo.root)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "No changes between hello@1 and hello@1\n"
    served = invoke("diff", "hello", "1", "--repo", repo.root)
    assert served.stderr == "No changes between hello@1 and what is served\n"
    repo.write("prompts/hello.md", repo.read("prompts/hello.md") + "More.\n")
    changed = invoke("diff", "hello", "1", "--repo", repo.root)
    assert "+More." in changed.stdout and changed.stderr == ""


# -- the first admin key -----------------------------------------------------------------------


def test_serve_creates_the_admin_key_when_keys_were_made_before_it(repo: Repo) -> None:
    """`keys create` before the first `serve` (the README's order) still gets an admin key;
    a second start with an active admin key makes none."""
    invoke("keys", "create", "my-app", "--repo", repo.root)
    with opened_workspace(repo.root) as ws:
        first = ws.keys.ensure_admin_key(ws.settings.admin_key_path)
        assert first is not None
        assert ws.settings.admin_key_path.read_text() == first + "\n"
        assert ws.keys.ensure_admin_key(ws.settings.admin_key_path) is None
        admin = [k for k in ws.keys.list() if k.scope == "admin"]
        assert len(admin) == 1
        ws.keys.revoke(admin[0].id)
        # With every admin key revoked, the next start makes a new way in.
        again = ws.keys.ensure_admin_key(ws.settings.admin_key_path)
        assert again is not None and again != first
        assert ws.keys.verify(again) is not None


# -- llmkit serve stops on SIGINT and SIGTERM, with exit code 0 and its run log written ---------

KEY_LINE = re.compile(r"^llmkit_[0-9A-Za-z]{32}$")
ECHO_PROMPT = "---\nmodel: echo\n---\n<!-- role:system -->\nYou are {{ mood }}.\n"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_with_code_0_and_keeps_the_row_logged_just_before(
    make_repo: MakeRepo, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """A real `python -m llmkit serve`: `keys create` before its first start still leaves it to
    create the admin key; a call answered just before the signal is in the run log after."""
    import httpx

    repo = make_repo("served", {"prompts/hello.md": ECHO_PROMPT})
    assert invoke("keys", "create", "my-app", "--repo", repo.root).exit_code == 0
    with serving(repo.root, tmp_path) as server:
        keys = [line for line in server.stdout().splitlines() if KEY_LINE.match(line)]
        assert len(keys) == 1, server.output()
        response = httpx.post(
            f"{server.v1}/chat/completions",
            headers={"Authorization": f"Bearer {keys[0]}"},
            json={"model": "hello", "variables": {"mood": "calm"}, "messages": []},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        trace = response.headers["x-llmkit-trace-id"]
        server.proc.send_signal(stop_signal)
        code = server.proc.wait(timeout=30)
        output = server.output()
    assert code == 0, output
    assert "Traceback" not in output and "Aborted" not in output, output
    with opened_workspace(repo.root) as ws:
        row = ws.runlog.get(trace)
    assert row is not None and row["prompt_key"] == "hello" and row["status"] == "ok"


# -- trace ids by unique prefix ----------------------------------------------------------------

TRACES = (
    "abcdef0011111111111111111111aaaa",
    "abcdef0022222222222222222222bbbb",
    "abcdef9933333333333333333333cccc",
    "abcdef99",  # a whole trace id that also starts a longer one
    "abcdef993",
)


def _log_rows(repo: Repo) -> None:
    from llmkit.runlog_record import RunRecord

    with opened_workspace(repo.root) as ws:
        for n, trace in enumerate(TRACES):
            ws.runlog.log(
                RunRecord(
                    trace_id=trace,
                    prompt_key="hello",
                    model="echo",
                    version_number=1,
                    request={"messages": [{"role": "user", "content": f"question {n}"}]},
                    response=f"answer {n}",
                )
            )
        assert ws.runlog.flush()


def test_logs_show_finds_a_call_by_unique_prefix_and_prints_it_in_full(repo: Repo) -> None:
    _log_rows(repo)
    shown = invoke("logs", "show", "abcdef001", "--repo", repo.root)
    assert shown.exit_code == 0, shown.stderr
    assert "trace_id:         abcdef0011111111111111111111aaaa" in shown.stdout
    assert '"content": "question 0"' in shown.stdout and "answer 0" in shown.stdout
    as_json = json.loads(invoke("logs", "show", "abcdef002", "--json", "--repo", repo.root).stdout)
    assert as_json["trace_id"] == TRACES[1] and as_json["response"] == "answer 1"
    # A whole trace id wins over the longer ids it starts.
    exact = json.loads(invoke("logs", "show", "abcdef99", "--json", "--repo", repo.root).stdout)
    assert exact["trace_id"] == "abcdef99"
    listing = invoke("logs", "--repo", repo.root, "-n", "2")
    assert listing.exit_code == 0 and "hello" in listing.stdout


def test_logs_show_refuses_ambiguous_short_and_unknown_prefixes(repo: Repo) -> None:
    _log_rows(repo)
    ambiguous = invoke("logs", "show", "abcdef0", "--repo", repo.root)
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr == (
        "Error: Trace id prefix 'abcdef0' is ambiguous: it starts"
        f" {TRACES[0]}, {TRACES[1]}; give more characters\n"
    )
    short = invoke("logs", "show", "abc", "--repo", repo.root)
    assert short.exit_code == 1 and "at least 6 characters" in short.stderr
    unknown = invoke("logs", "show", "ffffff", "--repo", repo.root)
    assert unknown.stderr == "Error: No log entry with trace id 'ffffff'\n"


def test_the_api_finds_a_log_entry_by_unique_prefix(make_repo: MakeRepo) -> None:
    from tests.api_fixtures import running_api

    repo = make_repo("logs", {"prompts/hello.md": ECHO_PROMPT})
    _log_rows(repo)
    with running_api(repo.root) as api:
        found = api.get("/v1/ui/logs/abcdef002")
        assert found.status_code == 200 and found.json()["trace_id"] == TRACES[1]
        exact = api.get("/v1/ui/logs/abcdef99")
        assert exact.status_code == 200 and exact.json()["trace_id"] == "abcdef99"
        cases = {
            "abcdef": (400, "ambiguous_trace_id"),
            "abc": (400, "trace_prefix_too_short"),
            "ffffffff": (404, "not_found"),
            "abcdef\ud7ff": (404, "not_found"),  # the range's end skips the surrogates
            "xxxxx%F4%8F%BF%BF": (404, "not_found"),  # U+10FFFF has nothing above it
        }
        for prefix, (status, code) in cases.items():
            response = api.get(f"/v1/ui/logs/{prefix}")
            assert response.status_code == status, (prefix, response.text)
            error = response.json()["error"]
            assert error["code"] == code and error["param"] == "trace_id", error
        message = api.get("/v1/ui/logs/abcdef9").json()["error"]["message"]
        assert message == (
            f"Trace id prefix 'abcdef9' is ambiguous: it starts {TRACES[3]}, {TRACES[4]},"
            f" {TRACES[2]}; give more characters"
        )


# -- shell completion, as the README enables it ------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_readme_enables_shell_completion_that_works(shell: str) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    assert f"_LLMKIT_COMPLETE={shell}_source llmkit" in readme
    script = CliRunner().invoke(
        main, [], prog_name="llmkit", env={"_LLMKIT_COMPLETE": f"{shell}_source"}
    )
    assert script.exit_code == 0
    assert "_llmkit_completion" in script.stdout and "_LLMKIT_COMPLETE" in script.stdout
    answer = CliRunner().invoke(
        main,
        [],
        prog_name="llmkit",
        env={"_LLMKIT_COMPLETE": "bash_complete", "COMP_WORDS": "llmkit logs s", "COMP_CWORD": "2"},
    )
    assert answer.stdout.splitlines() == ["plain,show"]

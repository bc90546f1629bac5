import asyncio
import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from llmkit.evals.asserts import Outcome, check_all
from llmkit.evals.cases import EvalCase
from llmkit.evals.console import render_table
from llmkit.evals.report import render_markdown, report_to_dict, write_json, write_junit
from llmkit.evals.results import CaseResult, EvalReport, build_report
from llmkit.evals.spec import load_eval_text

REPO = Path(__file__).resolve().parents[1]

TRIAGE = load_eval_text(
    """\
cases:
  - name: refund request
    input: I want my money back
    assert:
      - {type: contains, value: refund}
  - name: json | ticket
    input: file a ticket
    assert:
      - {type: is-json}
  - name: flaky
    repeat: 3
    threshold: 0.6
    assert:
      - {type: icontains, value: hello}
  - name: brand new
    assert:
      - {type: contains, value: new}
""",
    "evals/support/triage/basic.yaml",
).cases
GREET = load_eval_text(
    "name: hi\nassert: [{type: starts-with, value: Hi}]\n", "evals/greet/hi.yaml"
).cases


def case(cases: list[EvalCase], name: str) -> EvalCase:
    return next(c for c in cases if c.name == name)


def run(
    eval_case: EvalCase, text: str, *, version: int, repeat_index: int = 0, **outcome: Any
) -> CaseResult:
    """One run as the runner would record it: a real check of the case's assertions."""
    result = Outcome(
        text,
        latency_ms=outcome.pop("latency_ms", 100.0),
        output_tokens=outcome.pop("output_tokens", 10),
        **outcome,
    )
    checked = asyncio.run(check_all(eval_case.assertions, result))
    return CaseResult.of(
        eval_case,
        result,
        checked,
        version_number=version,
        version_sha=f"sha{version}",
        model="openai/gpt-4o-mini",
        repeat_index=repeat_index,
        cached=outcome.get("cost") == 0,
    )


def base_and_current() -> tuple[list[CaseResult], list[CaseResult]]:
    base = [
        run(
            case(TRIAGE, "refund request"),
            "Your refund is on its way",
            version=3,
            latency_ms=800,
            output_tokens=20,
            cost=0.002,
        ),
        run(case(TRIAGE, "json | ticket"), "Sure! here it is", version=3),
        *[run(case(TRIAGE, "flaky"), "Hello", version=3, repeat_index=i) for i in range(3)],
        run(GREET[0], "Hi there", version=1),
    ]
    current = [
        run(
            case(TRIAGE, "refund request"),
            "We cannot help\u0007 with that | sorry",
            version=4,
            latency_ms=950,
            output_tokens=25,
            cost=0.003,
        ),
        run(case(TRIAGE, "json | ticket"), '{"ticket": 1}', version=4),
        run(case(TRIAGE, "flaky"), "hello", version=4, repeat_index=0),
        run(case(TRIAGE, "flaky"), "bye", version=4, repeat_index=1),
        run(case(TRIAGE, "flaky"), "HELLO", version=4, repeat_index=2),
        run(case(TRIAGE, "brand new"), "", version=4, error="UpstreamError: 502 from provider"),
        run(GREET[0], "Hi there", version=1, cost=0),
    ]
    return base, current


def report_with_base() -> EvalReport:
    base, current = base_and_current()
    return build_report(current, base, base_ref="origin/main")


def test_build_report_tells_regressions_fixed_and_new_cases() -> None:
    report = report_with_base()
    statuses = {(c.prompt_key, c.case_name): c.status for c in report.cases}
    assert statuses == {
        ("support/triage", "refund request"): "regression",
        ("support/triage", "json | ticket"): "fixed",
        ("support/triage", "flaky"): "pass",
        ("support/triage", "brand new"): "new",
        ("greet", "hi"): "pass",
    }
    assert report.counts() == {
        "cases": 5,
        "passed": 3,
        "failed": 2,
        "regressions": 1,
        "fixed": 1,
        "new": 1,
        "runs": 7,
        "cached_runs": 1,
    }
    assert report.ok is False
    assert [c.case_name for c in report.regressions] == ["refund request"]


def test_repeats_pass_by_the_case_threshold() -> None:
    report = report_with_base()
    flaky = next(c for c in report.cases if c.case_name == "flaky")
    assert (flaky.after.passed_runs, flaky.after.runs) == (2, 3)
    assert flaky.passed is True  # 2/3 >= 0.6
    failing = [
        run(case(TRIAGE, "flaky"), text, version=4, repeat_index=i)
        for i, text in enumerate(["hello", "bye", "nope"])
    ]
    assert build_report(failing).cases[0].passed is False  # 1/3 < 0.6


def test_figures_compare_before_and_after() -> None:
    refund = next(c for c in report_with_base().cases if c.case_name == "refund request")
    assert refund.before is not None
    assert (refund.before.mean_latency_ms, refund.after.mean_latency_ms) == (800, 950)
    assert (refund.before.mean_output_tokens, refund.after.mean_output_tokens) == (20, 25)
    assert (refund.before.total_cost, refund.after.total_cost) == (0.002, 0.003)
    assert (refund.before.version_label, refund.after.version_label) == ("v3", "v4")


def test_without_a_base_cases_only_pass_or_fail() -> None:
    report = build_report(base_and_current()[1])
    assert report.compared is False
    assert {c.status for c in report.cases} == {"pass", "fail"}
    assert all(c.before is None for c in report.cases)


def test_prompts_list_regressions_first() -> None:
    prompts = report_with_base().prompts()
    assert [p.prompt_key for p in prompts] == ["greet", "support/triage"]
    assert [c.status for c in prompts[1].cases] == ["regression", "new", "fixed", "pass"]


def _html_tags(markdown: str) -> set[str]:
    """Tags that would render as HTML (an escaped `\\<` does not)."""
    return set(re.findall(r"(?<!\\)</?([A-Za-z][\w-]*)", markdown))


def test_markdown_summary_leads_with_the_headline_and_regressions() -> None:
    markdown = render_markdown(report_with_base())
    lines = markdown.splitlines()
    assert lines[0] == (
        "## ❌ llmkit eval: 3/5 cases passed · 1 regression · 1 fixed · 1 new · "
        "1 of 7 runs from cache"
    )
    assert "Before: prompt versions on origin/main. After: this change." in markdown
    regression_line = lines.index("**Regressions** (passed before, fail now):") + 2
    assert lines[regression_line] == (
        "- 🔻 **support/triage › refund request** (evals/support/triage/basic.yaml:2)"
    )
    assert markdown.index("**Regressions**") < markdown.index("### support/triage")
    table = lines[lines.index("### support/triage · v3 → v4") + 2 :]
    assert table[0] == (
        "|  | Case | Before | After | Δ pass rate | Latency (ms) | Output tokens | Cost (USD) |"
    )
    assert table[2] == (
        "| 🔻 regression | **refund request** | ✅ 1/1 | ❌ 0/1 | −100 pp | "
        "800 → 950 (+150) | 20 → 25 (+5) | 0.002 → 0.003 (+0.001) |"
    )
    assert table[4].startswith("| ✨ fixed | json \\| ticket | ❌ 0/1 | ✅ 1/1 | +100 pp |")
    assert "|  | **all cases** | 2/3 cases | 2/4 cases |  | 240 → 242 (+2) |" in markdown
    assert "### greet · v1 (unchanged)" in markdown
    assert _html_tags(markdown) == {"details", "summary"}


def test_markdown_details_give_failure_reasons_as_plain_text() -> None:
    markdown = render_markdown(report_with_base())
    details = markdown[markdown.index("<details>") : markdown.index("</details>")]
    assert "<summary>Failures (2)</summary>" in details
    assert (
        "**support/triage › refund request** (evals/support/triage/basic.yaml:2) — **regression**"
    ) in details
    assert (
        "  - contains: expected output to contain 'refund', got 'We cannot help\\\\x07 "
        "with that \\| sorry'"
    ) in details
    assert "  - contains: UpstreamError: 502 from provider" in details
    assert details.index("refund request") < details.index("brand new")


def test_markdown_without_a_base_has_no_before_column() -> None:
    markdown = render_markdown(build_report(base_and_current()[1]), title="evals")
    assert markdown.startswith("## ❌ evals: 3/5 cases passed")
    assert "| Before |" not in markdown
    assert "|  | Case | Runs passed | Latency (ms) | Output tokens | Cost (USD) |" in markdown
    assert render_markdown(build_report([])) == (
        "## ✅ llmkit eval: 0/0 cases passed\n\nNo eval cases ran.\n"
    )


def test_markdown_escapes_markup_in_names_and_output() -> None:
    tricky = load_eval_text(
        "name: <script>alert(1)</script> *bold*\nassert: [{type: equals, value: x}]\n",
        "evals/greet/x.yaml",
    ).cases[0]
    markdown = render_markdown(
        build_report([run(tricky, "<img src=x> [link](http://a)", version=1)])
    )
    assert _html_tags(markdown) == {"details", "summary"}
    assert "\\<script\\>alert\\(1\\)\\</script\\> \\*bold\\*" in markdown
    assert "\\[link\\]\\(http://a\\)" in markdown


def test_junit_has_a_suite_per_prompt_and_a_case_per_eval_case(tmp_path: Path) -> None:
    path = tmp_path / "eval-results.xml"
    write_junit(path, report_with_base())
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"greet", "support/triage"}
    triage = suites["support/triage"]
    assert (triage.get("tests"), triage.get("failures"), triage.get("errors")) == ("4", "1", "1")
    cases = {c.get("name"): c for c in triage.findall("testcase")}
    assert set(cases) == {"refund request", "json | ticket", "flaky", "brand new"}
    refund = cases["refund request"]
    assert (refund.get("file"), refund.get("line"), refund.get("time")) == (
        "evals/support/triage/basic.yaml",
        "2",
        "0.950",
    )
    failure = refund.find("failure")
    assert failure is not None
    assert failure.get("type") == "regression"
    assert failure.get("message", "").startswith(
        "regression (passed on origin/main): 0/1 runs passed; contains: expected output"
    )
    assert "run 1 (openai/gpt-4o-mini): contains: expected output to contain 'refund'" in (
        failure.text or ""
    )
    error = cases["brand new"].find("error")
    assert error is not None and "UpstreamError: 502" in error.get("message", "")
    assert cases["flaky"].find("failure") is None and cases["flaky"].find("error") is None
    versions = {p.get("name"): p.get("value") for p in triage.iter("property")}
    assert versions == {"version": "v4", "base_version": "v3"}


def test_junit_survives_control_characters_in_output(tmp_path: Path) -> None:
    broken = run(
        case(TRIAGE, "json | ticket"), "", version=1, error="provider sent \x00\x1b[31mred\ud800"
    )
    path = tmp_path / "junit.xml"
    write_junit(path, build_report([broken]))
    error = ET.parse(path).getroot().find(".//error")
    assert error is not None
    assert error.get("message", "").endswith("is-json: provider sent \ufffd\ufffd[31mred\ufffd")


def test_json_report_holds_summary_cases_and_every_run(tmp_path: Path) -> None:
    path = tmp_path / "eval-results.json"
    write_json(path, report_with_base())
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(report_to_dict(report_with_base())))
    assert data["ok"] is False
    assert data["base_ref"] == "origin/main"
    assert data["summary"]["regressions"] == 1
    refund = next(c for c in data["cases"] if c["case_name"] == "refund request")
    assert refund["status"] == "regression"
    assert refund["before"]["passed"] is True and refund["after"]["passed"] is False
    assert refund["after"]["version_sha"] == "sha4"
    [run_data] = refund["runs"]
    assert run_data["outcome"]["latency_ms"] == 950
    assert run_data["assertions"][0]["passed"] is False
    assert refund["base_runs"][0]["outcome"]["text"] == "Your refund is on its way"


def test_render_table_lists_every_case_regressions_first_as_plain_text() -> None:
    tricky = load_eval_text(
        "name: '[bold]not markup[/bold]'\nassert: [{type: is-json}]\n", "evals/greet/t.yaml"
    ).cases[0]
    base, current = base_and_current()
    table = render_table(build_report([*current, run(tricky, "{}", version=1)], base))
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    text = console.export_text()
    assert table.row_count == 6
    assert [col.header for col in table.columns][:5] == [
        "",
        "Prompt",
        "Case",
        "Before",
        "Runs passed",
    ]
    assert "[bold]not markup[/bold]" in text
    rows = [line for line in text.splitlines() if "support/triage" in line]
    assert "regression" in rows[0] and "refund request" in rows[0]
    assert "800 → 950 (+150)" in rows[0]


def test_render_table_folds_passing_cases_past_max_rows() -> None:
    base, current = base_and_current()
    report = build_report(current, base)
    statuses = [c.status for c in report.cases]
    table = render_table(report, max_rows=1)
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    text = console.export_text()
    folded = statuses.count("pass")
    assert folded > 0
    shown = len(statuses) - folded
    prompts_with_passes = {c.prompt_key for c in report.cases if c.status == "pass"}
    assert table.row_count == shown + len(prompts_with_passes)
    assert "passing cases" in text
    assert "refund request" in text  # the regression is never folded


# --- GitHub workflows and the pre-commit hook ----------------------------------------------


def _load(rel: str) -> Any:
    return yaml.safe_load((REPO / rel).read_text(encoding="utf-8"))


def _triggers(workflow: dict[Any, Any]) -> Any:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    [job] = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    return job["steps"]


def _runs(steps: list[dict[str, Any]]) -> list[str]:
    return [step["run"].strip() for step in steps if "run" in step]


def test_ci_workflow_installs_and_runs_the_tests() -> None:
    workflow = _load(".github/workflows/ci.yml")
    assert set(_triggers(workflow)) == {"push", "pull_request"}
    steps = _steps(workflow)
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"]["python-version"] == "3.11"
    commands = _runs(steps)
    install = commands.index("pip install -e '.[dev]'")
    assert commands.index("python -m pytest") > install


def test_evals_workflow_lints_evals_and_publishes_reports() -> None:
    """The eval workflow uses the action at the repository's root, which lints, evaluates
    against the base and publishes the reports."""
    workflow = _load(".github/workflows/evals.yml")
    triggers = _triggers(workflow)
    assert list(triggers) == ["pull_request"]
    assert triggers["pull_request"]["paths"] == [
        "prompts/**",
        "evals/**",
        "llmkit.yaml",
        "action.yml",
    ]
    [job] = workflow["jobs"].values()
    assert job["env"] == {
        "OPENAI_API_KEY": "${{ secrets.OPENAI_API_KEY }}",
        "ANTHROPIC_API_KEY": "${{ secrets.ANTHROPIC_API_KEY }}",
    }
    workflow_steps = _steps(workflow)
    checkout = next(s for s in workflow_steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert workflow_steps[-1]["uses"] == "./"
    steps = _load("action.yml")["runs"]["steps"]
    commands = [s.get("run", "") for s in steps]
    lint = commands.index("llmkit lint --format github")
    eval_step = next(s for s in steps if "llmkit eval" in s.get("run", ""))
    assert lint < steps.index(eval_step)
    command = eval_step["run"].split("\nllmkit eval ", 1)[1].split("code=$?")[0]
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == ["${base[@]}", "${extra[@]}"]
    assert argv[2::2] == ["--junit", "--json", "--markdown"]
    assert eval_step["env"]["BASE_REF"] == "${{ inputs.base-ref }}"
    # llmkit eval itself appends the summary to $GITHUB_STEP_SUMMARY; no step repeats it.
    assert not any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "${{ steps.eval.outputs.report-dir }}"
    assert steps.index(eval_step) < steps.index(upload)


def test_pre_commit_hook_lints_prompt_and_eval_changes() -> None:
    [hook] = _load(".pre-commit-hooks.yaml")
    assert (hook["id"], hook["entry"], hook["language"]) == ("llmkit-lint", "llmkit lint", "python")
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert all(files.search(p) for p in ("prompts/greet.md", "evals/greet/hi.yaml", "llmkit.yaml"))
    assert not any(files.search(p) for p in ("llmkit/cli.py", "README.md", "llmkit.yaml.bak"))

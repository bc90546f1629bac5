"""The numbers of a prompt as pictures: per committed version, latency, cost, error rate, eval
pass rate and mean human score, each an SVG chart drawn on the server (llmkit.web.charts) with
its figures in a table beside it. The figures are read as the API reads them: the run log's
per-version stats (`/v1/ui/prompts/KEY/stats`) and the eval records' performance
(`/v1/ui/prompts/KEY/performance`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from llmkit.api.deps import AdminKey, Ws
from llmkit.evals.records import EvalRecords
from llmkit.prompt_views import version_performance
from llmkit.versions import Version
from llmkit.web import charts
from llmkit.web.pages import page_router, pages

router = page_router()


def milliseconds(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.3g} s"
    return f"{value:.3g} ms"


def dollars(value: float) -> str:
    return f"{value:.3g} USD"


def percent(value: float) -> str:
    return f"{value:.3g}%"


def score(value: float) -> str:
    return f"{value:.2f} of 5"


@dataclass(frozen=True)
class NumbersChart:
    """A chart, the name of its section, and what to say when it has nothing to draw."""

    slug: str
    chart: charts.Chart
    empty: str
    note: str = ""


def _ratio(part: Any, whole: Any) -> float | None:
    part, whole = charts.finite(part), charts.finite(whole)
    if part is None or not whole:
        return None
    return part / whole


def number_charts(
    versions: list[Version], stats: list[dict[str, Any]], performance: list[dict[str, Any]]
) -> list[NumbersChart]:
    """The charts of one prompt: one category per committed version, oldest first; `stats` as
    RunLog.stats gives them and `performance` as version_performance does. Figures of drafts
    and of versions no longer in history are not charted (they have no place on the axis)."""
    committed = [v for v in versions if not v.draft and v.sha and v.number is not None]
    categories = [f"v{v.number}" for v in committed]
    calls = {s["version_sha"]: s for s in stats if not s["draft"] and s["version_sha"]}
    evals = {p["sha"]: p for p in performance if not p.get("draft") and p.get("sha")}
    per_call = [calls.get(v.sha) or {} for v in committed]
    scored = [evals.get(v.sha) or {} for v in committed]

    def pct(value: Any) -> float | None:
        number = charts.finite(value)
        return None if number is None else number * 100

    no_calls = "No calls of this prompt's committed versions are in the run log yet."
    shas = {v.sha for v in committed}
    uncharted = sum(s["count"] for s in stats if s["draft"] or s["version_sha"] not in shas)
    note = (
        f"{uncharted} call{'' if uncharted == 1 else 's'} of drafts or of versions no longer"
        " in history are not charted."
        if uncharted
        else ""
    )
    return [
        NumbersChart(
            "latency",
            charts.chart(
                "line",
                "Latency per version",
                categories,
                [
                    ("p50", [c.get("latency_p50_ms") for c in per_call]),
                    ("p95", [c.get("latency_p95_ms") for c in per_call]),
                ],
                y_label="Latency (ms)",
                unit=milliseconds,
            ),
            no_calls,
            note,
        ),
        NumbersChart(
            "cost",
            charts.chart(
                "bar",
                "Mean cost per call",
                categories,
                [("cost per call", [_ratio(c.get("cost"), c.get("count")) for c in per_call])],
                y_label="Cost per call (USD)",
                unit=dollars,
            ),
            "No cost is recorded for this prompt's calls (no price known for their models, or"
            " no calls yet).",
        ),
        NumbersChart(
            "errors",
            charts.chart(
                "bar",
                "Error rate per version",
                categories,
                [("error rate", [pct(c.get("error_rate")) for c in per_call])],
                y_label="Calls that failed (%)",
                unit=percent,
                y_max=100,
            ),
            no_calls,
        ),
        NumbersChart(
            "pass-rate",
            charts.chart(
                "bar",
                "Eval pass rate per version",
                categories,
                [("pass rate", [pct(e.get("pass_rate")) for e in scored])],
                y_label="Eval results that passed (%)",
                unit=percent,
                y_max=100,
            ),
            "No eval has been run against this prompt's committed versions yet.",
        ),
        NumbersChart(
            "score",
            charts.chart(
                "line",
                "Mean human score per version",
                categories,
                [("mean score", [e.get("avg_score") for e in scored])],
                y_label="Mean human score (1-5)",
                unit=score,
                y_max=5,
            ),
            "No eval output of this prompt has been scored by a person yet.",
        ),
    ]


@router.get("/numbers/{key:path}")
def numbers_page(request: Request, key: str, ws: Ws, admin: AdminKey) -> Response:
    """Per version of a prompt: latency, cost, error rate, eval pass rate and mean score."""
    prompt = ws.index.get_prompt(key)
    versions = ws.index.versions(prompt.key)
    ws.runlog.flush()
    stats = ws.runlog.stats(prompt.key)
    records: EvalRecords = request.app.state.eval_records
    performance = version_performance(versions, records.performance(prompt.key))
    return pages(request).render(
        request,
        "numbers.html",
        prompt=prompt,
        charts=number_charts(versions, stats, performance),
        calls=sum(s["count"] for s in stats),
    )

"""``corecraft report DIR``: one self-contained HTML page for an evaluation run.

The page has the summary, charts as inline SVG (no scripts or assets fetched from anywhere), and every run's
trajectory: its tool calls with arguments and results, the final answer, and each criterion's verdict with
its evidence. Agent text is untrusted, so everything is HTML-escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from corecraft.eval.metrics import summarize
from corecraft.eval.records import CONFIG_FILE, read_runs

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CoreCraft evaluation: {{ config.get("model") or "runs" }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;color:#1d2330}
h1{font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #dde;padding:.25rem .6rem;text-align:right}
th{background:#f3f4f8}td.l,th.l{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}.charts figure{margin:0}
figcaption{font-weight:600;margin-bottom:.3rem}
details.run{border:1px solid #dde;border-radius:6px;margin:.4rem 0;padding:.3rem .6rem}
details.run[open]{background:#fbfbfd}
summary{cursor:pointer}.pass{color:#137333;font-weight:600}.fail{color:#b3261e;font-weight:600}
.call{border-left:3px solid #8ab4f8;margin:.4rem 0;padding:.1rem .6rem}.call.err{border-color:#f28b82}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f7f9;padding:.4rem;margin:.2rem 0;max-height:24rem;overflow:auto}
.muted{color:#667}.tag{display:inline-block;background:#eef;border-radius:4px;padding:0 .4rem;margin-right:.3rem;font-size:12px}
#filter{margin:.5rem 0}
</style></head><body>
<h1>CoreCraft evaluation{% if config.get("model") %}: {{ config.get("model") }}{% endif %}</h1>
<p class="muted">{{ overall.tasks }} tasks, {{ overall.runs }} runs{% if config.get("base_url") %}, endpoint {{ config.get("base_url") }}{% endif %}{% if config.get("judge_mode") %}, judge mode {{ config.get("judge_mode") }}{% endif %}.</p>

<h2>Summary</h2>
<table><tr>{% for k in headline %}<th>{{ k }}</th>{% endfor %}</tr>
<tr>{% for k in headline %}<td>{{ fmt(overall.get(k)) }}</td>{% endfor %}</tr></table>

<div class="charts">
{% for chart in charts %}<figure><figcaption>{{ chart.title }}</figcaption>{{ chart.svg | safe }}</figure>{% endfor %}
</div>

{% for group_name, groups in groups %}
<h2>By {{ group_name }}</h2>
<table><tr><th class="l">{{ group_name }}</th>{% for k in headline %}<th>{{ k }}</th>{% endfor %}</tr>
{% for name, m in groups.items() %}<tr><td class="l">{{ name }}</td>{% for k in headline %}<td>{{ fmt(m.get(k)) }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}

<h2>Runs</h2>
<div id="filter"><label><input type="checkbox" id="only-failed"> show failed runs only</label>
<span class="muted" id="shown"></span></div>
{% for r in runs %}
<details class="run" data-passed="{{ 'true' if r.passed else 'false' }}">
<summary><span class="{{ 'pass' if r.passed else 'fail' }}">{{ 'PASS' if r.passed else 'FAIL' }}</span>
 {{ r.task_id }} #{{ r.sample }} <span class="tag">{{ r.category }}</span><span class="tag">{{ r.difficulty }}</span>
 <span class="tag">{{ r.family }}</span> score {{ fmt(r.reward) }}, {{ r.n_tool_calls }} tool calls{% if r.get('n_tool_calls_refused') %} ({{ r.n_tool_calls_refused }} refused){% endif %}, {{ r.turns }} turns
 {% if r.stop_reason != 'final' %}<span class="fail">({{ r.stop_reason }})</span>{% endif %}</summary>
<p><b>Request</b></p><pre>{{ r.request }}</pre>
<p><b>Criteria</b></p>
<table><tr><th class="l">id</th><th class="l">kind</th><th class="l">axis</th><th class="l">criterion</th><th class="l">verdict</th><th class="l">evidence</th></tr>
{% for v in r.verdict_rows %}<tr><td class="l">{{ v.id }}</td><td class="l">{{ v.kind }}</td><td class="l">{{ v.axis }}</td>
<td class="l">{{ v.text }}</td><td class="l {{ 'pass' if v.satisfied else 'fail' }}">{{ 'yes' if v.satisfied else 'no' }}</td>
<td class="l">{{ v.evidence }}</td></tr>{% endfor %}</table>
<p><b>Tool calls</b></p>
{% for c in r.trajectory.tool_calls %}<div class="call{{ ' err' if c.is_error else '' }}">
<div>{{ loop.index }}. <code>{{ c.name }}</code>{% if c.is_error %} <span class="fail">error</span>{% endif %}</div>
<pre>{{ c.arguments | tojson }}</pre><pre>{{ result_text(c.result) }}</pre></div>
{% else %}<p class="muted">No tool calls.</p>{% endfor %}
<p><b>Final answer</b></p><pre>{{ r.trajectory.final_response or '(empty)' }}</pre>
</details>
{% endfor %}
<script>
(function () {
  var box = document.getElementById("only-failed");
  var shown = document.getElementById("shown");
  var runs = document.querySelectorAll("details.run");
  function apply() {
    var n = 0;
    runs.forEach(function (el) {
      var hide = box.checked && el.dataset.passed === "true";
      el.style.display = hide ? "none" : "";
      if (!hide) { n += 1; }
    });
    shown.textContent = n + " of " + runs.length + " runs shown";
  }
  box.addEventListener("change", apply);
  apply();
})();
</script>
</body></html>
"""

HEADLINE_KEYS = ("tasks", "runs", "pass_rate", "mean_score", "pass@1")


def _esc(text: str) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;"))


def bar_chart(values: Mapping[str, float], *, width: int = 360, bar_h: int = 22, max_value: float = 1.0) -> str:
    """A horizontal bar chart (values in [0, max_value]) as an SVG string."""
    label_w, pad = 150, 4
    height = max(1, len(values)) * (bar_h + pad) + pad
    span = width - label_w - 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (name, v) in enumerate(values.items()):
        y = pad + i * (bar_h + pad)
        w = 0 if max_value <= 0 else max(0.0, min(1.0, v / max_value)) * span
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" font-size="12">'
                     f"{_esc(name)}</text>")
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4e79a7"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h * 0.7:.1f}" font-size="12">{v:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(values: Sequence[float], *, bins: int = 10, width: int = 360, height: int = 160) -> str:
    """A histogram of rewards in [0, 1] as an SVG string."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    top = max(counts) or 1
    bw = (width - 40) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" role="img">']
    for i, c in enumerate(counts):
        h = c / top * (height - 20)
        x = 30 + i * bw
        parts.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="#59a14f">'
                     f"<title>{i / bins:.1f}-{(i + 1) / bins:.1f}: {c}</title></rect>")
        if c:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{height - h - 3:.1f}" font-size="11" '
                         f'text-anchor="middle">{c}</text>')
    parts.append(f'<text x="30" y="{height + 15}" font-size="11">0</text>')
    parts.append(f'<text x="{width - 10}" y="{height + 15}" font-size="11" text-anchor="end">1</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "n/a" if v is None else str(v)  # e.g. Pass@k of a group with no task that has k runs


def _result_text(result: Any, limit: int = 4000) -> str:
    text = result if isinstance(result, str) else json.dumps(result, indent=1, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} more characters]"


def _verdict_rows(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    crit = {c["id"]: c for c in run.get("criteria", [])}
    rows = []
    for v in run.get("score", {}).get("verdicts", []):
        c = crit.get(v["criterion_id"], {})
        rows.append({"id": v["criterion_id"], "kind": c.get("kind", v.get("source", "")), "axis": c.get("axis", ""),
                     "text": c.get("text", ""), "satisfied": v["satisfied"], "evidence": v.get("evidence", "")})
    return rows


def render_report(runs: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    k = int(config.get("k") or max([r.get("sample", 0) + 1 for r in runs] or [1]))
    summary = summarize(runs, k)
    overall = summary["overall"]
    kk = overall.get("k", 1)
    # tasks_below_k: tasks with fewer than k runs, left out of Pass@k / Pass^k (shown when there are any).
    headline = [*HEADLINE_KEYS, *((f"pass@{kk}", f"pass^{kk}") if kk > 1 else ()),
                *(("tasks_below_k",) if overall.get("tasks_below_k") else ()), "tool_calls_per_run",
                "executed_tool_calls_per_run", "refused_tool_calls_per_run", "turns_per_run",
                *(("prompt_tokens",) if overall.get("prompt_tokens") is not None else ()),
                *(k for k in ("judge_criterion_agreement", "judge_pass_agreement") if k in overall)]
    charts = [
        {"title": "Pass rate by category", "svg": bar_chart({g: m["pass_rate"] for g, m in summary["by_category"].items()})},
        {"title": "Pass rate by difficulty",
         "svg": bar_chart({g: m["pass_rate"] for g, m in summary["by_difficulty"].items()})},
        {"title": "Mean score by category",
         "svg": bar_chart({g: m["mean_score"] for g, m in summary["by_category"].items()})},
        {"title": "Rubric score per run", "svg": histogram([float(r["reward"]) for r in runs])},
        {"title": "Criteria satisfied by rubric axis", "svg": bar_chart(summary["criteria"]["axis"])},
    ]
    ordered = sorted(runs, key=lambda r: (r["passed"], r["task_id"], r.get("sample", 0)))
    view = [dict(r, verdict_rows=_verdict_rows(r)) for r in ordered]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(TEMPLATE)
    return template.render(config=config, overall=overall, headline=headline, charts=charts,
                           groups=[("category", summary["by_category"]), ("difficulty", summary["by_difficulty"]),
                                   ("family", summary["by_family"])],
                           runs=view, fmt=_fmt, result_text=_result_text)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    runs = read_runs(run_dir)
    if not runs:
        raise FileNotFoundError(f"{run_dir}: no runs.jsonl with finished runs")
    config_path = run_dir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    target = Path(out) if out else run_dir / "report.html"
    target.write_text(render_report(runs, config), encoding="utf-8")
    return target

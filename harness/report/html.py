"""The static HTML leaderboard: one page, PNGs beside it, no server and no network.

Every column sorts on a click (numbers by value, text alphabetically, empty cells last) through a
small inline script; a Content-Security-Policy forbids any request other than the page's own images.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.report.plots import Plot
from harness.report.runs import RunResults

CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
p.meta, p.note { color: #555; font-size: 0.9em; }
p.caveat { color: #a40000; }
table.leaderboard { border-collapse: collapse; font-size: 0.85em; margin: 12px 0; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 4px 8px; white-space: nowrap; }
table.leaderboard th { white-space: normal; max-width: 110px; background: #f0f3f5; cursor: pointer; }
table.leaderboard th { user-select: none; position: sticky; top: 0; }
table.leaderboard th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.leaderboard th[aria-sort="descending"]::after { content: " \\25BC"; }
table.leaderboard td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.leaderboard span.ci { display: block; font-size: 0.8em; color: #777; }
div.scroll { overflow-x: auto; max-width: 100%; }
table.leaderboard tr:nth-child(even) td { background: #fafbfc; }
section.run { margin-top: 28px; border-top: 2px solid #ddd; }
div.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; max-width: 640px; }
figure.wide { max-width: 1296px; flex-basis: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    return v === null || v === "" ? null : parseFloat(v);
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var numeric = th.getAttribute("data-type") === "num";
    rows.sort(function (a, b) {
      var x = a.cells[col], y = b.cells[col];
      if (numeric) {
        var p = key(x), q = key(y);
        if (p === null && q === null) return 0;
        if (p === null) return 1;
        if (q === null) return -1;
        return asc ? p - q : q - p;
      }
      var s = x.textContent, t = y.textContent;
      return asc ? s.localeCompare(t) : t.localeCompare(s);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  document.querySelectorAll("table.leaderboard").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortBy(table, col, th); });
    });
  });
})();
"""

Cells = Mapping[str, tuple[str, float | None]]


def table_html(header: Sequence[str], rows: Sequence[Cells], table_id: str = "leaderboard") -> str:
    numeric = {h for h in header if any(r[h][1] is not None for r in rows)}
    head = "".join(
        f'<th data-type="{"num" if h in numeric else "text"}" title="click to sort">{html.escape(h)}</th>'
        for h in header
    )
    body = []
    for row in rows:
        cells = []
        for h in header:
            text, value = row[h]
            if h in numeric:
                sort = "" if value is None else repr(value)
                value_text, _, interval = text.partition(" [")
                ci = f'<span class="ci">[{html.escape(interval)}</span>' if interval else ""
                cells.append(f'<td class="num" data-sort="{sort}">{html.escape(value_text)}{ci}</td>')
            else:
                cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="leaderboard" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# layer x expert maps are wide (up to 16 x 3 inches): they take a whole row of the plot grid
WIDE_PLOTS = frozenset({"ftri_map"})
WIDE = ' class="wide"'


def run_section(run: RunResults, plots: Sequence[Plot], page_dir: Path) -> str:
    info = run.ftri()
    lines = [f'<section class="run" id="run-{html.escape(run.run_id)}">', f"<h2>{html.escape(run.run_id)}</h2>"]
    meta = f"suite {run.suite_name}, model {run.model}"
    if run.model_sha:
        meta += f" (sha256 {run.model_sha})"
    git = run.run.get("git") or {}
    if git.get("commit"):
        meta += f", code {str(git['commit'])[:10]}{' (dirty)' if git.get('dirty') else ''}"
    lines.append(f'<p class="meta">{html.escape(meta)}</p>')
    lines += [f'<p class="caveat"><b>{html.escape(caveat)}</b></p>' for caveat in run.caveats]
    if info is not None:
        top = ", ".join(f"L{r['layer']}/E{r['expert']}" for r in info.get("top", [])[: int(info.get("k", 0))])
        stability = (info.get("stability") or {}).get("jaccard_mean")
        text = f"fTRI top {info.get('k')} ({info.get('score')}, span {info.get('span')}): {top}"
        if stability is not None:
            text += f"; bootstrap Jaccard {stability:.2f}"
        lines.append(f'<p class="meta">{html.escape(text)}</p>')
    lines += agreement_html(run)
    lines += sweep_html(run)
    lines.append('<div class="plots">')
    for plot in plots:
        src = plot.path.relative_to(page_dir).as_posix()
        wide = WIDE if plot.name in WIDE_PLOTS else ""
        lines.append(
            f'<figure{wide}><img src="{html.escape(src)}" alt="{html.escape(plot.title)}">'
            f"<figcaption><b>{html.escape(plot.title)}.</b> {html.escape(plot.caption)}</figcaption></figure>"
        )
    lines += ["</div>", "</section>"]
    return "\n".join(lines)


def agreement_html(run: RunResults) -> list[str]:
    """The judges' agreement table of a run that was re-judged (`harness judge --run`), if any."""
    import json

    path = run.path / "judge_agreement.json"
    if not path.is_file():
        return []
    header = ["task", "judge A", "judge B", "n", "agreement", "Cohen's kappa", "confusion (A -> B)"]
    rows: list[Cells] = []
    for r in json.loads(path.read_text(encoding="utf-8")):
        confusion = ", ".join(f"{c['a']}->{c['b']}: {c['count']}" for c in r["confusion"])
        rows.append(
            {
                "task": (str(r["task"]), None),
                "judge A": (str(r["a"]), None),
                "judge B": (str(r["b"]), None),
                "n": (str(r["n"]), float(r["n"])),
                "agreement": (f"{r['accuracy']:.3f}", float(r["accuracy"])),
                "Cohen's kappa": (f"{r['kappa']:.3f}", float(r["kappa"])),
                "confusion (A -> B)": (confusion + (" (refused vs not)" if r["collapsed"] else ""), None),
            }
        )
    table_id = f"agreement-{html.escape(run.run_id)}"
    return ["<h3>Agreement between judges</h3>", table_html(header, rows, table_id=table_id)]


def sweep_html(run: RunResults) -> list[str]:
    """A model sweep's tables: per task one row per model, and the transitions."""
    from harness.sweep.report import RULE, model_table, transition_table

    if not any(r.lambda_ is not None for r in run.rows):
        return []
    conditions = list(dict.fromkeys(r.condition for r in run.rows if ":seed=" not in r.condition))
    out = []
    for task_type in ("refusal", "language", "qa", "mt_bench"):
        for task in run.tasks_of_type(task_type):
            header, body = model_table(list(run.rows), task, task_type, conditions)
            out += [f"<h3>Sweep: {html.escape(task)}</h3>", table_html(header, _cells(header, body), f"sweep-{task}")]
    header, body = transition_table(run.transitions)
    out += ["<h3>Transitions</h3>", table_html(header, _cells(header, body), f"transitions-{run.run_id}")]
    out.append(f'<p class="note">{html.escape(RULE)}</p>')
    return out


def _cells(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[Cells]:
    def key(text: str) -> float | None:
        try:
            return float(text.split(" ")[0])
        except ValueError:
            return None

    return [{h: (c, key(c)) for h, c in zip(header, cells, strict=True)} for cells in body]


def page(title: str, table: str, sections: Sequence[str], notes: Sequence[str]) -> str:
    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">Click a column header to sort. Built from stored results only (summary.json); nothing recomputed.</p>
{table}
{note_html}
{"".join(sections)}
<script>{SCRIPT}</script>
</body>
</html>
"""

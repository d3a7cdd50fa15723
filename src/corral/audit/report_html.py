"""The HTML report: one self-contained page (inline CSS and SVG, no scripts, no external assets)
that a person can read without corral: totals, findings per category, the worst trajectories with
their offending steps shown between the step before and the step after."""

from __future__ import annotations

import time
from html import escape
from typing import Any

SEV_COLOR = {"critical": "#8b0000", "high": "#c62828", "medium": "#ef6c00", "low": "#1565c0",
             "info": "#607d8b"}  # fmt: skip
VERDICT_COLOR = {"deny": "#c62828", "ask": "#ef6c00", "allow": "#2e7d32"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.sub{color:#5b6475;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #d8dce3}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#eef0f4;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#5b6475}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.traj{background:#fff;border:1px solid #d8dce3;border-radius:8px;margin:14px 0;padding:12px 16px}
.traj h3{margin:0 0 4px;font-size:15px;word-break:break-all}
.meta{color:#5b6475;font-size:12px;word-break:break-all}
.worst{margin:8px 0}
.step{border-left:4px solid #d8dce3;margin:8px 0;padding:4px 10px;background:#fafbfc}
.step.flag{border-left-color:#c62828;background:#fff5f5}
.step .hd{font-size:12px;color:#5b6475;font-weight:600}
.step .rules{color:#c62828;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;padding:6px 8px;background:#f0f2f5;border-radius:4px;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;max-height:220px;overflow:auto}
pre.cmd{background:#1d2330;color:#e8ecf2}
.lbl{font-size:11px;color:#5b6475;text-transform:uppercase;letter-spacing:.04em}
.empty{color:#5b6475;font-style:italic}
"""


def _badge(text: str, color: str) -> str:
    return f'<span class="badge" style="background:{color}">{escape(text)}</span>'


def _where(r: dict[str, Any]) -> str:
    if r.get("line") is not None:
        return f"{r['file']}:{r['line']}"
    if r.get("item") is not None:
        return f"{r['file']}[{r['item']}]"
    return str(r["file"])


def bar_chart(categories: dict[str, dict[str, int]], width: int = 720) -> str:
    """Horizontal bars: trajectories flagged per category (findings in the label)."""
    if not categories:
        return '<p class="empty">No findings in any category.</p>'
    row, label_w, pad = 28, 170, 8
    top = max(v["trajectories"] for v in categories.values()) or 1
    bar_w = width - label_w - 150
    height = row * len(categories) + pad * 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="trajectories flagged per category">']  # fmt: skip
    for i, (cat, v) in enumerate(categories.items()):
        y = pad + i * row
        w = max(2, round(bar_w * v["trajectories"] / top))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 18}" text-anchor="end" font-size="13" '
            f'fill="#1d2330">{escape(cat)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w}" height="{row - 8}" rx="3" fill="#c62828"/>'
            f'<text x="{label_w + w + 6}" y="{y + 18}" font-size="12" fill="#5b6475">'
            f"{v['trajectories']} traj · {v['findings']} findings</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _step_html(s: dict[str, Any]) -> str:
    flagged = bool(s["flagged"])
    head = f"step {s['step']} · {escape(s['role'] or '?')}"
    if s.get("ref"):
        head += f" · ref {escape(str(s['ref']))}"
    out = [f'<div class="step{" flag" if flagged else ""}"><div class="hd">{head}']
    if flagged:
        out.append(f' — <span class="rules">{escape(", ".join(s["flagged"]))}</span>')
    out.append("</div>")
    if s["text"]:
        out.append(f'<div class="lbl">message</div><pre>{escape(s["text"])}</pre>')
    for c in s["commands"]:
        lbl = "file write (as shell)" if c["synthetic"] else "command"
        out.append(f'<div class="lbl">{lbl}</div><pre class="cmd">{escape(c["command"])}</pre>')
    if s["observation"]:
        out.append(f'<div class="lbl">output</div><pre>{escape(s["observation"])}</pre>')
    if not (s["text"] or s["commands"] or s["observation"]):
        out.append('<div class="empty">(empty)</div>')
    out.append("</div>")
    return "".join(out)


def _trajectory_html(r: dict[str, Any]) -> str:
    w = r["worst"]
    sev_color = SEV_COLOR.get(w["severity"], "#607d8b")
    steps = ", ".join(map(str, w["steps"]))
    out = [
        '<div class="traj">',
        f"<h3>{_badge(r['verdict'], VERDICT_COLOR.get(r['verdict'], '#607d8b'))} {escape(r['id'])}</h3>",
        f'<div class="meta">{escape(_where(r))} · {escape(r["format"])} · {r["steps"]} steps · '
        f"{len(r['findings'])} findings</div>",
        f'<div class="worst">{_badge(w["severity"], sev_color)} <b>{escape(w["rule"])}</b> '
        f"({escape(w['category'])}{', ATT&amp;CK ' + escape(w['attack']) if w.get('attack') else ''}) "
        f"at step {escape(steps)}: {escape(w['message'])}</div>",
    ]
    other = sorted({(f["rule"], f["step"]) for f in r["findings"] if f["rule"] != w["rule"]})
    if other:
        listed = ", ".join(f"{escape(rule)} @ {step}" for rule, step in other[:12])
        out.append(f'<div class="meta">also: {listed}</div>')
    out.extend(_step_html(s) for s in r.get("_context", []))
    out.append("</div>")
    return "".join(out)


PAGE = 100


def _flagged_html(flagged: list[dict[str, Any]], total: int) -> str:
    """Every flagged trajectory in brief, 100 rows a page, paged without scripts: one radio input
    per page (before the table), a label per page as its button, and a CSS rule per page showing
    its <tbody> while its input is checked."""
    if not flagged:
        return '<p class="empty">Nothing flagged.</p>'
    pages = [flagged[i : i + PAGE] for i in range(0, len(flagged), PAGE)]
    radios = "".join(
        f'<input type="radio" name="pg" id="pg{n}" class="pg"{" checked" if n == 0 else ""}>'
        for n in range(len(pages))
    )
    css = (
        "tbody.page{display:none}input.pg{display:none}div.pager label{cursor:pointer;"
        "padding:0 .35em;text-decoration:underline}"
    ) + "".join(
        f"#pg{n}:checked~table tbody.p{n}{{display:table-row-group}}"
        f"#pg{n}:checked~div.pager label[for=pg{n}]{{font-weight:bold}}"
        for n in range(len(pages))
    )
    labels = " ".join(f'<label for="pg{n}">{n + 1}</label>' for n in range(len(pages)))
    body = []
    for n, rows in enumerate(pages):
        cells = "".join(
            f"<tr><td>{_badge(r['verdict'], VERDICT_COLOR.get(r['verdict'], '#607d8b'))}</td>"
            f"<td>{escape(str(r['id']))}</td><td>{escape(_where(r))}</td><td>{escape(r['format'])}</td>"
            f"<td>{escape(r['severity'])} {escape(r['rule'])}</td>"
            f"<td>{escape(', '.join(map(str, r['steps'])))}</td><td>{r['findings']}</td></tr>"
            for r in rows
        )
        body.append(f'<tbody class="page p{n}">{cells}</tbody>')
    more = (f'<p class="meta">{total - len(flagged):,} more flagged trajectories are in --json.</p>'
            if total > len(flagged) else "")  # fmt: skip
    return (f"<style>{css}</style><div class=\"flagged\">{radios}"
            f'<div class="pager">page {labels}</div>'
            "<table><thead><tr><th>verdict</th><th>trajectory</th><th>where</th>"
            "<th>format</th><th>worst finding</th><th>steps</th><th>findings</th></tr></thead>"
            + "".join(body) + "</table></div>" + more)  # fmt: skip


def render(summary: dict[str, Any], worst: list[dict[str, Any]], malformed: list[dict[str, Any]],
           *, policy: str, inputs: list[str],
           flagged: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    v = summary["verdicts"]
    cards = [
        ("trajectories", summary["trajectories"]), ("deny", v["deny"]), ("ask", v["ask"]),
        ("allow", v["allow"]), ("unreadable", v.get("unreadable", 0)), ("kept", summary["kept"]),
        ("dropped", summary["dropped"]),
        ("malformed", summary["malformed"]), ("files", summary["files"]),
        ("commands", summary["commands"]),
    ]  # fmt: skip
    cat_rows = "".join(
        f"<tr><td>{escape(c)}</td><td>{n['trajectories']}</td><td>{n['findings']}</td></tr>"
        for c, n in summary["categories"].items()
    )
    fv = summary.get("format_verdicts", {})
    fmt_rows = "".join(
        f"<tr><td>{escape(f)}</td><td>{n}</td>"
        + "".join(
            f"<td>{fv.get(f, {}).get(c, 0)}</td>" for c in ("allow", "ask", "deny", "unreadable")
        )
        + "</tr>"
        for f, n in summary["formats"].items()
    )
    rule_rows = "".join(
        f"<tr><td>{escape(r)}</td><td>{n}</td></tr>" for r, n in summary.get("rules", {}).items()
    )
    unread_rows = "".join(
        f"<tr><td>{escape(_where(u))}</td><td>{escape(str(u['id']))}</td><td>{escape(u['format'])}"
        f"</td><td>{escape(u['unreadable'])}</td></tr>"
        for u in summary.get("unreadable", [])
    )
    bad_rows = "".join(
        f"<tr><td>{escape(_where(m))}</td><td>{escape(m['error'])}</td></tr>" for m in malformed
    )
    html = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>corral audit — {summary['trajectories']} trajectories</title><style>{CSS}</style></head><body><main>",
        "<h1>corral audit report</h1>",
        f'<div class="sub">policy <b>{escape(policy)}</b> · rules: {escape(summary.get("engine", ""))} · {escape(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))}'
        f" · inputs: {escape(', '.join(inputs))}</div>",
        '<div class="cards">',
        *(f'<div class="card"><span>{k}</span><b>{n:,}</b></div>' for k, n in cards),
        "</div>",
        "<h2>Findings per category</h2>",
        bar_chart(summary["categories"]),
        (f"<table><tr><th>category</th><th>trajectories flagged</th><th>findings</th></tr>{cat_rows}</table>"
         if cat_rows else ""),
        "<h2>Formats</h2>",
        ("<table><tr><th>format</th><th>trajectories</th><th>allow</th><th>ask</th><th>deny</th>"
         f"<th>unreadable</th></tr>{fmt_rows}</table>") if fmt_rows
        else '<p class="empty">No trajectories read.</p>',
        "<h2>Findings per rule</h2>",
        f"<table><tr><th>rule</th><th>findings</th></tr>{rule_rows}</table>" if rule_rows
        else '<p class="empty">No findings.</p>',
        f"<h2>Unreadable trajectories ({v.get('unreadable', 0)})</h2>",
        ("<table><tr><th>where</th><th>id</th><th>format</th><th>why</th></tr>"
         f"{unread_rows}</table>") if unread_rows
        else '<p class="empty">None: every trajectory had commands read.</p>',
        f"<h2>All flagged trajectories ({summary.get('flagged', len(flagged or [])):,})</h2>",
        _flagged_html(flagged or [], summary.get("flagged", len(flagged or []))),
        f"<h2>Worst trajectories ({len(worst)} shown)</h2>",
        "".join(_trajectory_html(r) for r in worst) or '<p class="empty">Nothing flagged.</p>',
        f"<h2>Malformed records ({summary['malformed']})</h2>",
        (f"<table><tr><th>where</th><th>error</th></tr>{bad_rows}</table>" if bad_rows
         else '<p class="empty">None: every record was read.</p>'),
        "</main></body></html>",
    ]  # fmt: skip
    return "\n".join(html)

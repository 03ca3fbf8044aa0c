"""The drift report as one self-contained HTML page (stored beside the check in the artifacts bucket).

Charts are inline SVG written here rather than drawn by matplotlib, so the report renders in a small
Lambda function with nothing but the standard library; there is no script and no external link, so
the page opens the same from S3, a mail attachment or a laptop. The same report always renders to
the same bytes: every number is formatted explicitly and every list has a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pricepipe.drift.check import Distribution, DriftCheck, DriftReport

MAX_BARS = 24  # beyond this many buckets a chart pools its smallest ones, to stay readable
REFERENCE_COLOUR = "#7b8fb8"
CURRENT_COLOUR = "#e8833a"
DRIFT_COLOUR = "#c0392b"
STABLE_COLOUR = "#2e8b57"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 6px}.meta{color:#555;font-size:13px}
.decision{padding:12px 16px;border-radius:6px;margin:16px 0;border:1px solid}
.decision.drift{background:#fdecea;border-color:#c0392b}.decision.stable{background:#eaf6ee;border-color:#2e8b57}
.decision.nodata{background:#f4f4f4;border-color:#999}.decision strong{font-size:18px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#fafafa}
.yes{color:#c0392b;font-weight:bold}.no{color:#2e8b57}.note{color:#666;font-size:12px}
.feature{border-top:1px solid #eee;padding-top:4px}.badge{font-size:12px;padding:1px 6px;border-radius:3px;color:#fff}
.badge.yes{background:#c0392b}.badge.no{background:#2e8b57}
"""


def render_html(report: DriftReport, *, title: str = "Drift report", decision: str | None = None) -> str:
    """The whole page for one report; ``decision`` what was decided on it, in words
    (:func:`pricepipe.drift.flow.decide`)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)} {escape(report.check_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{_meta(report)}</p>',
        _decision(report, decision),
        "<h2>Summary</h2>",
        _summary_table(report),
    ]
    performance = [c for c in report.checks if c.kind == "performance"]
    if performance:
        parts += ["<h2>Performance</h2>", _performance(performance)]
    if report.distributions:
        parts.append("<h2>Distributions</h2>")
        parts.append(
            f'<p class="note">{_legend()} Bars are shares of non-missing values per reference bin or category.</p>'
        )
        checks = _checks_by_column(report.checks)
        ordered = sorted(report.distributions, key=lambda d: (not d.drifted, d.name == "prediction"))
        parts.extend(_column_section(d, checks.get(_column_key(d), [])) for d in ordered)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _meta(report: DriftReport) -> str:
    items = [
        f"model {report.model_name or 'unknown'} version {report.model_version or 'unknown'}",
        f"window {_when(report.window_start)} to {_when(report.window_end)}",
        f"{report.current_rows:,} current rows against {report.reference_rows:,} reference rows",
        f"checked {report.checked_at.isoformat(timespec='seconds')}",
        f"check {report.check_id}",
    ]
    return " &middot; ".join(escape(item) for item in items)


def _when(moment: object) -> str:
    return moment.isoformat() if hasattr(moment, "isoformat") else "-"


def _decision(report: DriftReport, decision: str | None) -> str:
    if report.status == "not_enough_data" and not report.drifted:
        css, headline = "nodata", "NOT ENOUGH DATA"
    elif report.drifted:
        css, headline = "drift", "DRIFT"
    else:
        css, headline = "stable", "NO DRIFT"
    t = report.thresholds
    items = "".join(f"<li>{escape(reason)}</li>" for reason in report.reasons)
    rule = (
        f"A feature drifts when PSI &ge; {t.psi:g} or KS &ge; {t.ks:g}, confirmed by a p-value &lt; {t.pvalue:g}; "
        f"the dataset drifts when at least {t.share:.0%} of features drift, or the predictions drift, or RMSE or MAE "
        f"reach {t.rmse_ratio:g}&times; / {t.mae_ratio:g}&times; the training holdout's."
    )
    return (
        f'<div class="decision {css}"><strong>Found: {headline}</strong>'
        + (f"<p><strong>Decision:</strong> {escape(decision)}</p>" if decision else "")
        + f"<ul>{items}</ul><div class='note'>{rule}</div></div>"
    )


def _column_key(distribution: Distribution) -> tuple[str, str]:
    return ("prediction" if distribution.name == "prediction" else "feature", distribution.name)


def _checks_by_column(checks: Iterable[DriftCheck]) -> dict[tuple[str, str], list[DriftCheck]]:
    out: dict[tuple[str, str], list[DriftCheck]] = {}
    for check in checks:
        if check.feature is not None and check.kind in ("feature", "prediction"):
            out.setdefault((check.kind, check.feature), []).append(check)
    return out


def _summary_table(report: DriftReport) -> str:
    checks = _checks_by_column(report.checks)
    rows = []
    for distribution in report.distributions:
        by_metric = {c.metric: c for c in checks.get(_column_key(distribution), [])}
        if distribution.kind == "numeric":
            test = _cell(by_metric.get("ks"))
            p = by_metric.get("ks_pvalue")
        else:
            chi2 = by_metric.get("chi2")
            test = f"&chi;&sup2; {_num(chi2.value)}" if chi2 else "-"
            p = by_metric.get("chi2_pvalue")
        flag = "yes" if distribution.drifted else "no"
        rows.append(
            f"<tr><td>{escape(distribution.name)}</td><td>{distribution.kind}</td>"
            f"<td>{_cell(by_metric.get('psi'))}</td><td>{test}</td><td>{_num(p.value) if p else '-'}</td>"
            f"<td>{_pct(distribution.reference_missing)} / {_pct(distribution.current_missing)}</td>"
            f'<td class="{flag}">{flag}</td></tr>'
        )
    for name, why in report.skipped_features:
        rows.append(
            f'<tr><td>{escape(name)}</td><td colspan="5" class="note">not checked: {escape(why)}</td><td>-</td></tr>'
        )
    for check in report.checks:
        if check.feature is None and check.kind != "performance":
            rows.append(f'<tr><td>{check.kind}</td><td colspan="6" class="note">{escape(check.note)}</td></tr>')
    header = (
        "<tr><th>column</th><th>type</th><th>PSI (threshold)</th><th>KS / chi-square</th><th>p-value</th>"
        "<th>missing ref / cur</th><th>drifted</th></tr>"
    )
    return f"<table>{header}{''.join(rows)}</table>"


def _cell(check: DriftCheck | None) -> str:
    if check is None:
        return "-"
    threshold = f" ({_num(check.threshold)})" if check.threshold is not None else ""
    css = "yes" if check.drifted else ""
    return f'<span class="{css}">{_num(check.value)}</span>{threshold}'


def _performance(checks: Sequence[DriftCheck]) -> str:
    rows = []
    for check in checks:
        threshold = _num(check.threshold) if check.threshold is not None else "-"
        flag = "yes" if check.drifted else "no"
        note = f'<div class="note">{escape(check.note)}</div>' if check.note else ""
        rows.append(
            f"<tr><td>{escape(check.metric)}{note}</td><td>{_num(check.value)}</td><td>{threshold}</td>"
            f'<td class="{flag}">{flag}</td></tr>'
        )
    gauges = "".join(
        f"<div>{escape(c.metric)} {_gauge(c.value, c.threshold, c.drifted)}</div>"
        for c in checks
        if c.metric.endswith("_ratio") and c.threshold is not None
    )
    return (
        "<table><tr><th>metric</th><th>value</th><th>threshold</th><th>drifted</th></tr>"
        f"{''.join(rows)}</table>{gauges}"
    )


def _column_section(distribution: Distribution, checks: Sequence[DriftCheck]) -> str:
    flag = "yes" if distribution.drifted else "no"
    badge = "drifted" if distribution.drifted else "stable"
    gauges = []
    for check in checks:
        if check.metric in ("psi", "ks") and check.threshold is not None:
            gauges.append(
                f"<div>{check.metric.upper()} {_gauge(check.value, check.threshold, check.drifted)}"
                f"{f' <span class=note>{escape(check.note)}</span>' if check.note else ''}</div>"
            )
        elif check.metric in ("ks_pvalue", "chi2_pvalue"):
            verdict = "significant" if check.drifted else "not significant"
            gauges.append(
                f'<div class="note">{check.metric.replace("_", " ")} {_num(check.value)} '
                f"(&lt; {_num(check.threshold)} is significant): {verdict}</div>"
            )
    return (
        f'<div class="feature"><h3>{escape(distribution.name)} <span class="badge {flag}">{badge}</span> '
        f'<span class="note">{distribution.kind}, {distribution.current_rows:,} current values</span></h3>'
        f"{bar_chart(distribution)}{''.join(gauges)}</div>"
    )


def _legend() -> str:
    return (
        f'<svg width="12" height="12"><rect width="12" height="12" fill="{REFERENCE_COLOUR}"/></svg> reference '
        f'<svg width="12" height="12"><rect width="12" height="12" fill="{CURRENT_COLOUR}"/></svg> current.'
    )


def _displayed(distribution: Distribution) -> tuple[list[str], list[float], list[float]]:
    labels, ref, cur = list(distribution.labels), list(distribution.reference), list(distribution.current)
    if len(labels) <= MAX_BARS:
        return labels, ref, cur
    # keep the buckets that matter on either side; ties resolved by position, so output is stable
    weight = sorted(range(len(labels)), key=lambda i: (-max(ref[i], cur[i]), i))
    kept = sorted(weight[: MAX_BARS - 1])
    rest = [i for i in range(len(labels)) if i not in set(kept)]
    return (
        [labels[i] for i in kept] + [f"(rest: {len(rest)})"],
        [ref[i] for i in kept] + [sum(ref[i] for i in rest)],
        [cur[i] for i in kept] + [sum(cur[i] for i in rest)],
    )


def bar_chart(distribution: Distribution, *, width: int = 900, height: int = 220) -> str:
    """Reference and current shares side by side for each bucket, as an inline SVG."""
    labels, ref, cur = _displayed(distribution)
    left, right, top, bottom = 44, 8, 10, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([*ref, *cur, 1e-12])
    group = plot_w / len(labels)
    bar = group * 0.38
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(distribution.name)} distribution">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_pct(peak * fraction)}</text>'
        )
    for i, label in enumerate(labels):
        x0 = left + i * group + group * 0.1
        for offset, share, colour, side in (
            (0.0, ref[i], REFERENCE_COLOUR, "reference"),
            (bar, cur[i], CURRENT_COLOUR, "current"),
        ):
            h = plot_h * share / peak
            out.append(
                f'<rect x="{x0 + offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(label)}: {side} {_pct(share)}</title></rect>'
            )
        cx, cy = left + (i + 0.5) * group, top + plot_h + 12
        short = label if len(label) <= 16 else label[:15] + "…"
        out.append(
            f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="10" text-anchor="end" '
            f'transform="rotate(-35 {cx:.1f} {cy:.1f})">{escape(short)}<title>{escape(label)}</title></text>'
        )
    out.append("</svg>")
    return "".join(out)


def _gauge(value: float, threshold: float | None, drifted: bool, *, width: int = 320) -> str:
    """A horizontal bar for a score with its threshold marked, as an inline SVG."""
    limit = threshold if threshold is not None else value
    scale = max(2 * limit, value, 1e-12) * 1.05
    filled = width * min(value / scale, 1.0)
    mark = width * limit / scale
    colour = DRIFT_COLOUR if drifted else STABLE_COLOUR
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 120}" height="18" role="img" '
        f'aria-label="score {_num(value)} against threshold {_num(threshold)}">'
        f'<rect x="0" y="4" width="{width}" height="10" fill="#eee"/>'
        f'<rect x="0" y="4" width="{filled:.1f}" height="10" fill="{colour}"/>'
        f'<line x1="{mark:.1f}" x2="{mark:.1f}" y1="0" y2="18" stroke="#222" stroke-width="2"/>'
        f'<text x="{width + 6}" y="13" font-size="11">{_num(value)} / {_num(threshold)}</text></svg>'
    )


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"

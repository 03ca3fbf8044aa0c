"""The HTML drift report: every checked column, the decision and its reasons, in one stable file."""

from __future__ import annotations

import datetime as dt
import re
from html import escape
from html.parser import HTMLParser

import numpy as np
import pytest

from pricepipe.drift.check import DriftReport, DriftThresholds, check_drift
from pricepipe.drift.reference import reference_from_data
from pricepipe.drift.report import render_html
from pricepipe.settings import Settings

THRESHOLDS = DriftThresholds.from_settings(Settings())
NUMERIC = ["price_level", "nights"]
CATEGORICAL = ["room", "country"]


def _frame(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    countries = np.array([f"c{i:02d}" for i in range(40)], dtype=object)  # more than a chart shows
    return {
        "price_level": rng.normal(100 + 30 * shift, 20, n),
        "nights": rng.poisson(3, n).astype(float),
        "room": rng.choice(np.array(["a", "b", "c<&>"], dtype=object), n, p=[0.5, 0.3, 0.2]),
        "country": rng.choice(countries, n),
    }


def _report(shift: float, rows: int = 2_000) -> DriftReport:
    rng = np.random.default_rng(1)
    reference = reference_from_data(
        _frame(rng, 20_000, 0.0), numeric=NUMERIC, categorical=CATEGORICAL, predictions=rng.normal(100, 10, 20_000)
    )
    predictions = rng.normal(100 + 20 * shift, 10, rows)
    return check_drift(
        reference,
        _frame(rng, rows, shift),
        predictions=predictions,
        actuals=predictions + rng.normal(0, 12, rows),
        reference_metrics={"rmse": 10.0, "mae": 8.0},
        thresholds=THRESHOLDS,
        model_name="price-model",
        model_version="7",
        check_id="check-1",
        checked_at=dt.datetime(2017, 8, 8, 6, 0, tzinfo=dt.UTC),
        window_start=dt.datetime(2017, 8, 1, tzinfo=dt.UTC),
        window_end=dt.datetime(2017, 8, 8, tzinfo=dt.UTC),
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        self.links += [f"{name}={value}" for name, value in attrs if name in ("src", "href")]
        if tag not in ("meta", "br"):
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


@pytest.mark.parametrize("shift", [0.0, 1.0], ids=["stable", "drifted"])
def test_the_report_shows_every_checked_column_and_the_decision_with_its_reasons(shift: float) -> None:
    report = _report(shift)

    page = render_html(report, decision="no retraining: feature drift found but performance stable (RMSE 1 vs 1)")

    for name in (*report.checked_features, "prediction"):
        assert re.search(rf"<h3>{re.escape(escape(name))} <span", page), name
        assert f"<td>{escape(name)}</td>" in page
    headline = "DRIFT" if report.drifted else "NO DRIFT"
    assert f"<strong>Found: {headline}</strong>" in page
    assert "<strong>Decision:</strong> no retraining: feature drift found but performance stable" in page
    for reason in report.reasons:
        assert escape(reason) in page
    assert report.drifted is (shift > 0)


def test_the_page_is_self_contained_well_formed_and_escaped() -> None:
    page = render_html(_report(1.0))

    tags = _Tags()
    tags.feed(page)

    assert tags.open == []
    assert tags.links == []
    assert "script" not in tags.seen
    assert tags.seen.count("svg") >= 6  # a chart per column plus score gauges
    assert "c<&>" not in page and "c&lt;&amp;&gt;" in page
    assert "(rest: 17)" in page  # 40 countries: the chart pools the smallest beyond 24 bars


def test_the_same_report_renders_to_the_same_bytes() -> None:
    assert render_html(_report(1.0)) == render_html(_report(1.0))


def test_a_window_without_enough_rows_says_so() -> None:
    page = render_html(_report(0.0, rows=20))

    assert "<strong>Found: NOT ENOUGH DATA</strong>" in page
    assert "not enough data: 20 current rows" in page

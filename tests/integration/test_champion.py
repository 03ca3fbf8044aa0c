"""The champion rules: which version is the champion, and when a challenger beats it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pricepipe import champion


def test_a_challenger_at_the_bar_wins_and_one_just_above_it_does_not() -> None:
    at_bar = champion.challenger_wins(90.0, 100.0, 0.1)
    above = champion.challenger_wins(90.001, 100.0, 0.1)
    assert at_bar.wins and at_bar.bar == pytest.approx(90.0)
    assert not above.wins


def test_the_reason_names_both_sides_the_bar_and_where_they_were_measured() -> None:
    verdict = champion.challenger_wins(
        24.2, 41.1, 0.02, challenger="version 3", champion="champion 2", measured_on="on 212 holdout rows"
    )
    assert verdict.reason == "version 3 RMSE 24.200 <= 40.278 (champion 2 41.100 less 2.0%) on 212 holdout rows"


def test_a_zero_margin_lets_an_equal_challenger_win() -> None:
    assert champion.challenger_wins(10.0, 10.0, 0.0).wins


def _register(conn: psycopg.Connection[Any], model_name: str, version: str, stage: str) -> None:
    conn.execute(
        "INSERT INTO model_registry.models (model_name, version, stage, serving_artifact_uri, metrics)"
        " VALUES (%s, %s, %s, %s, %s)",
        (model_name, version, stage, f"s3://a/{model_name}/{version}/serving/model.npz", '{"rmse": 1.5}'),
    )


def test_the_champion_is_the_version_holding_the_stage_for_that_model_only(conn: psycopg.Connection[Any]) -> None:
    assert champion.current(conn, "price-model") is None
    _register(conn, "other-model", "7", "champion")
    _register(conn, "price-model", "1", "previous")
    _register(conn, "price-model", "2", "champion")
    _register(conn, "price-model", "3", "challenger")

    found = champion.current(conn, "price-model")

    assert found == champion.Champion("price-model", "2", "s3://a/price-model/2/serving/model.npz", {"rmse": 1.5})
    assert champion.current(conn, "other-model").version == "7"  # type: ignore[union-attr]

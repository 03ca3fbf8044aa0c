"""The drift decision and its words (pricepipe.drift.flow.decide): for every combination of what a
check can find, the words say what was decided and why, and never contradict the decision."""

from __future__ import annotations

import itertools

import pytest

from pricepipe.drift.flow import NO_CHAMPION, NO_DATA, Findings, decide, explain

# performance: None (no actual prices yet), False (measured, stable), True (measured, drifted)
COMBINATIONS = list(itertools.product([False, True], [False, True], [None, False, True], [True, False]))


def _findings(feature: bool, prediction: bool, performance: bool | None, enough_rows: bool) -> Findings:
    return Findings(
        feature_drift=feature,
        prediction_drift=prediction,
        performance_drift=bool(performance),
        rmse=None if performance is None else (48.25 if performance else 30.04),
        holdout_rmse=None if performance is None else 28.9,
        enough_rows=enough_rows,
    )


@pytest.mark.parametrize(("feature", "prediction", "performance", "enough_rows"), COMBINATIONS)
def test_the_words_agree_with_the_decision_for_every_combination(
    feature: bool, prediction: bool, performance: bool | None, enough_rows: bool
) -> None:
    verdict = decide(_findings(feature, prediction, performance, enough_rows))

    # the rule: measured errors decide; only without them do shifted inputs or predictions
    expected = (performance is True) if performance is not None else (feature or prediction)
    assert verdict.decision == ("retrain" if expected else "none")
    why = verdict.why
    assert why.startswith("retraining: " if expected else "no retraining: "), why
    assert ("performance drifted" in why) is (performance is True), why
    assert ("performance stable" in why) is (performance is False), why
    assert ("not measured" in why or "cannot be measured" in why) is (performance is None), why
    assert ("feature drift found" in why or "feature and prediction drift found" in why) is feature, why
    assert ("prediction drift found" in why or "feature and prediction drift found" in why) is prediction, why
    assert ("no feature or prediction drift" in why) is (enough_rows and not feature and not prediction), why
    assert ("too few rows" in why) is (not enough_rows and not feature and not prediction), why
    if performance is not None:
        assert f"RMSE {48.25 if performance else 30.04:.1f} vs 28.9 on the training holdout" in why, why
    assert "DRIFT" not in why and "none" not in why  # no verdict label of another layer


@pytest.mark.parametrize(
    ("found", "words"),
    [
        (  # the week the issue names: inputs moved, the champion still prices well
            Findings(True, True, False, rmse=31.24, holdout_rmse=28.9),
            "no retraining: feature and prediction drift found but performance stable"
            " (RMSE 31.2 vs 28.9 on the training holdout)",
        ),
        (
            Findings(False, False, False, rmse=29.0, holdout_rmse=28.9),
            "no retraining: no feature or prediction drift and performance stable"
            " (RMSE 29.0 vs 28.9 on the training holdout)",
        ),
        (
            Findings(False, True, True, rmse=48.25, holdout_rmse=28.9),
            "retraining: performance drifted (RMSE 48.2 vs 28.9 on the training holdout); prediction drift found",
        ),
        (
            Findings(True, False, False),
            "retraining: feature drift found, and performance cannot be measured yet (no actual prices)",
        ),
        (
            Findings(False, False, False, enough_rows=False),
            "no retraining: too few rows in the window to check the features"
            " (performance not measured: no actual prices yet)",
        ),
        (
            Findings(False, False, True, rmse=40.0),
            "retraining: performance drifted (RMSE 40.0); no feature or prediction drift",
        ),
    ],
)
def test_the_wordings(found: Findings, words: str) -> None:
    assert decide(found).why == words


def test_a_result_is_explained_by_its_own_words_or_the_same_words_from_its_fields() -> None:
    result = {
        "decision": "none",
        "drifted": True,
        "feature_drift": True,
        "prediction_drift": True,
        "performance_drift": False,
        "status": "checked",
        "performance": {"rmse": 31.24, "rmse_ratio": 31.24 / 28.9, "mae": 20.0, "mae_ratio": 1.0},
        "reasons": ["DRIFT: features, predictions", "performance stable: ..."],
    }
    expected = decide(Findings(True, True, False, rmse=31.24, holdout_rmse=28.9)).why

    assert explain(result) == expected  # a result from before ``why`` (a stack not redeployed yet)
    assert explain({**result, "why": "no retraining: as the check said"}) == "no retraining: as the check said"
    unchecked = {"decision": "retrain", "drifted": None, "reasons": ["no champion model yet"]}
    assert explain(unchecked) == "retraining: no champion model yet"
    assert NO_CHAMPION.startswith("retraining: ") and NO_DATA.startswith("no retraining: ")

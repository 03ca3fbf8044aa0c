"""How a canary is judged (pricepipe.promotion.canary), and how deployments name their model: pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from pricepipe.promotion import deployer
from pricepipe.promotion.canary import expected_shift, judge_canary, prediction_shift
from pricepipe.settings import Settings

SETTINGS = Settings(
    canary_min_requests=20,
    canary_min_predictions=50,
    canary_max_bakes=3,
    canary_max_error_rate=0.01,
    canary_max_p99_ms=500,
    canary_max_prediction_psi=0.25,
)
RNG = np.random.default_rng(11)
CHAMPION = RNG.lognormal(4.6, 0.4, 2000)  # prices around 100


@pytest.fixture(autouse=True)
def _draws_that_do_not_depend_on_test_order() -> None:
    """Every test starts its draws from the same seed, whichever tests ran before it."""
    global RNG
    RNG = np.random.default_rng(12)


def judge(
    *,
    attempt: int = 1,
    invocations: float = 200,
    errors: float = 0,
    p99: float | None = 20.0,
    server_errors: float = 0,
    canary: np.ndarray | None = None,
    champion: np.ndarray = CHAMPION,
    settings: Settings = SETTINGS,
    expected_psi: float | None = None,
) -> dict:  # type: ignore[type-arg]
    return judge_canary(
        settings,
        attempt=attempt,
        canary={"invocations": invocations, "errors": errors, "p99_ms": p99},
        server_errors=server_errors,
        canary_predictions=RNG.lognormal(4.6, 0.4, 400) if canary is None else canary,
        champion_predictions=champion,
        expected_psi=expected_psi,
    )


def test_a_canary_like_the_champion_is_healthy() -> None:
    verdict = judge()
    assert verdict["verdict"] == "healthy"
    assert {c["check"] for c in verdict["checks"]} == {"error_rate", "p99_ms", "prediction_psi"}


def test_predictions_ten_times_the_champions_fail_the_canary() -> None:
    verdict = judge(canary=RNG.lognormal(4.6, 0.4, 400) * 10)
    assert verdict["verdict"] == "unhealthy"
    assert "prediction_psi" in verdict["reason"] and "canary unhealthy" in verdict["reason"]


def test_a_shift_the_training_evaluation_approved_does_not_fail_the_canary() -> None:
    # GIVEN a retrained model pricing the newest days ~20% lower than the champion, as it did on the
    # training holdout (prices fell; the champion had not learnt it)
    lower = RNG.lognormal(4.6 - 0.25, 0.4, 400)
    evaluated = expected_shift(CHAMPION, RNG.lognormal(4.6 - 0.25, 0.4, 2000))

    without = judge(canary=lower)
    with_evaluation = judge(canary=lower, expected_psi=evaluated)

    # THEN without that evidence the shift fails it; with it, it passes, the allowance named
    assert without["verdict"] == "unhealthy" and "prediction_psi" in without["reason"]
    assert with_evaluation["verdict"] == "healthy", with_evaluation["reason"]
    assert "expected by the training evaluation" in with_evaluation["reason"]


def test_an_approved_shift_does_not_cover_an_absurd_canary() -> None:
    evaluated = expected_shift(CHAMPION, RNG.lognormal(4.6 - 0.25, 0.4, 2000))

    verdict = judge(canary=RNG.lognormal(4.6, 0.4, 400) * 10, expected_psi=evaluated)

    assert verdict["verdict"] == "unhealthy" and "prediction_psi" in verdict["reason"]


def test_errors_above_the_rate_fail_the_canary_even_without_crashes() -> None:
    # Lambda saw no error: the API answered 5xx itself
    verdict = judge(invocations=100, errors=0, server_errors=5)
    assert verdict["verdict"] == "unhealthy" and "error_rate 0.05 > 0.01" in verdict["reason"]


def test_a_slow_canary_fails() -> None:
    assert judge(p99=900.0)["verdict"] == "unhealthy"


def test_evidence_of_failure_counts_however_little_traffic_there_was() -> None:
    assert judge(invocations=3, errors=1, canary=np.array([]))["verdict"] == "unhealthy"


def test_too_little_traffic_bakes_again_then_follows_the_policy() -> None:
    few = RNG.lognormal(4.6, 0.4, 10)
    assert judge(invocations=5, canary=few)["verdict"] == "wait"
    last = judge(attempt=3, invocations=5, canary=few)
    assert last["verdict"] == "unhealthy" and "not enough traffic" in last["reason"]
    lenient = SETTINGS.model_copy(update={"canary_on_insufficient_traffic": "promote"})
    assert judge(attempt=3, invocations=5, canary=few, settings=lenient)["verdict"] == "healthy"


def test_samples_of_one_distribution_rarely_fail_at_the_minimum_sample_size() -> None:
    # PSI between two small samples of the same prices is biased upwards; significance is required too
    failed = [
        not judge(canary=RNG.lognormal(4.6, 0.4, 50), champion=RNG.lognormal(4.6, 0.4, 120))["checks"][-1]["passed"]
        for _ in range(300)
    ]
    assert np.mean(failed) < 0.02


def test_a_real_shift_is_caught_at_the_minimum_sample_size() -> None:
    verdicts = [
        judge(canary=RNG.lognormal(4.6, 0.4, 50) * 1.6, champion=RNG.lognormal(4.6, 0.4, 120))["verdict"]
        for _ in range(50)
    ]
    assert verdicts.count("unhealthy") >= 45


def test_shift_is_none_for_equal_samples_and_large_for_disjoint_ones() -> None:
    value, pvalue = prediction_shift(CHAMPION, CHAMPION)
    assert value == pytest.approx(0.0, abs=1e-9) and pvalue == pytest.approx(1.0)
    value, pvalue = prediction_shift(CHAMPION, CHAMPION + 1000)
    assert value > 5 and pvalue < 1e-6


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (deployer.describe("price-model", "12"), ("price-model", "12")),
        ("model my@model@3", ("my@model", "3")),
        ("no model deployed yet", None),
        ("", None),
        (None, None),
    ],
)
def test_a_function_version_names_its_model_in_its_description(
    description: str | None, expected: tuple[str, str] | None
) -> None:
    assert deployer.model_of(description) == expected


def test_the_model_layer_replaces_an_older_one_and_comes_last() -> None:
    deps = "arn:aws:lambda:us-east-1:1:layer:pricepipe-deps:4"
    old = "arn:aws:lambda:us-east-1:1:layer:pricepipe-model:7"
    new = "arn:aws:lambda:us-east-1:1:layer:pricepipe-model:8"
    assert deployer.with_model_layer([old, deps], "pricepipe-model", new) == [deps, new]
    assert deployer.with_model_layer([deps], "pricepipe-model", new) == [deps, new]
    with pytest.raises(deployer.DeploymentError, match="not a layer version ARN"):
        deployer.layer_name_of("arn:aws:lambda:us-east-1:1:function:pricepipe-api")

"""The statistics drift checks are built on, against their definitions and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from pricepipe.drift.stats import EPSILON, chi2_sf, kolmogorov_sf, ks_against_sketch, psi


def test_ks_is_exact_against_the_sketch_including_gaps_just_below_a_current_value() -> None:
    uniform = np.linspace(0, 1, 101)  # the sketch of a uniform(0, 1) reference
    current = np.array([0.205, 0.205, 0.905, 0.905])

    # the ECDF is 0.5 on [0.205, 0.905) while the reference reaches 0.905 just below 0.905
    assert ks_against_sketch(uniform, current) == pytest.approx(0.405, abs=1e-12)


def test_an_empty_bin_scores_through_the_epsilon_not_infinity() -> None:
    expected = 0.5 * np.log(1.0 / 0.5) + (EPSILON - 0.5) * np.log(EPSILON / 0.5)

    assert psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(expected) and expected > 4


def test_p_values_agree_with_scipy() -> None:
    for statistic, df in [(0.5, 1), (3.84, 1), (10.0, 3), (100.0, 80), (200.0, 99), (50.0, 2), (1e-3, 5)]:
        assert chi2_sf(statistic, df) == pytest.approx(stats.chi2.sf(statistic, df), rel=1e-9, abs=1e-15)
    for lam in [0.1, 0.5, 1.0, 1.17, 1.19, 1.5, 2.5]:
        assert kolmogorov_sf(lam) == pytest.approx(special.kolmogorov(lam), rel=1e-9, abs=1e-15)

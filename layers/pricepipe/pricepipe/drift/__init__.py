"""Drift of a current window against the production model's training reference.

The reference is the small JSON document :mod:`~pricepipe.drift.reference` builds per model
version; the current window is a pandas DataFrame or a mapping of column name to numpy array. The
core is numpy only (pandas is touched only to take columns out of a DataFrame), so it runs in a
small Lambda function; p-values are computed here too, because scipy is not in the function's layers.

- :mod:`~pricepipe.drift.stats`: PSI, KS against a quantile sketch, chi-square, their p-values.
- :mod:`~pricepipe.drift.reference`: the one builder of reference statistics, and their validation.
- :mod:`~pricepipe.drift.columns`: columns as float64 arrays and integer-coded categories.
- :mod:`~pricepipe.drift.check`: thresholds, the per-feature, prediction and performance checks, the report.
- :mod:`~pricepipe.drift.store`: reports into ``monitoring.drift_metrics``.
- :mod:`~pricepipe.drift.report`: a report as one self-contained HTML page.
- :mod:`~pricepipe.drift.flow`: the drift state machine's step: check, store, decide.

Metrics, per feature
--------------------
numeric
    ``psi``: population stability index over the reference's quantile bins,
    ``sum((c - r) * ln(c / r))`` with ``r`` the reference share and ``c`` the current share of each bin.
    Both shares are clipped to at least :data:`~pricepipe.drift.stats.EPSILON` (1e-4), so an empty
    bin scores a large but finite term instead of infinity; 1e-4 is the usual choice and keeps one
    empty bin out of ten from deciding the result on its own.
    ``ks``: the two-sample Kolmogorov-Smirnov statistic, the largest gap between the reference and
    current CDFs. The reference CDF is the document's 101-point quantile sketch interpolated
    linearly (a run of equal quantiles becomes a jump, so discrete features keep their steps); the
    current CDF is exact. Within each 1% band the true reference CDF is unknown, so the statistic can
    be off by up to about 0.01, far below any threshold worth using.
    ``ks_pvalue``: asymptotic Kolmogorov p-value with the effective size n*m/(n+m) (Stephens'
    small-sample correction), m being the reference's non-missing rows.
categorical
    ``psi`` over category shares, with ``chi2`` / ``chi2_pvalue``: Pearson's test of homogeneity of
    the 2 x k table of current counts and reference counts (the reference's shares times its rows).
    Categories the reference pooled as ``other_fraction`` and categories it never saw are pooled in
    one ``(other)`` bucket, and so are reference categories too rare to expect 5 current rows (the
    usual validity rule for chi-square; it also keeps PSI from scoring noise in rare categories).

A feature drifts when an effect size (``psi`` or ``ks``) crosses its threshold **and** its test's
p-value is below ``drift_pvalue``. Predictions are checked as a numeric feature against the
document's ``prediction`` summary. Performance compares RMSE and MAE over the rows whose actual price
has arrived with the model's training holdout metrics, as ratios.

The dataset drifts when the share of drifted features reaches ``drift_share_threshold``, or the
predictions drift, or performance does. Too few current rows is a result ("not enough data", not
drifted), not an error; so is too few rows with actuals for the performance check.

Nothing is imported here: the drift function's cold start loads :mod:`~pricepipe.drift.flow` alone
and numpy only when it checks.
"""

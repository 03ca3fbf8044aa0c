"""Drift reports in PostgreSQL: ``monitoring.drift_metrics``, one row per check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from pricepipe.drift.check import DriftReport

_INSERT = (
    "INSERT INTO monitoring.drift_metrics (check_id, checked_at, model_name, model_version, kind, feature, metric,"
    " value, threshold, drifted, window_start, window_end, reference_rows, current_rows) VALUES"
    " (%(check_id)s, %(checked_at)s, %(model_name)s, %(model_version)s, %(kind)s, %(feature)s, %(metric)s,"
    " %(value)s, %(threshold)s, %(drifted)s, %(window_start)s, %(window_end)s, %(reference_rows)s, %(current_rows)s)"
)


def save_report(conn: psycopg.Connection[Any], report: DriftReport) -> int:
    """Write the report to ``monitoring.drift_metrics``, one row per check, all or nothing."""
    rows = report.rows()
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(_INSERT, rows)
    return len(rows)

"""Drift's error: inputs that cannot be compared."""

from __future__ import annotations

from pricepipe.errors import PricePipeError


class DriftInputError(PricePipeError):
    """The reference document or the current data cannot be compared (named in the message)."""

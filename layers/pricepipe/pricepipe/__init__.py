"""Shared domain package of the price-prediction pipeline.

Plain functions over DataFrames and dataclasses; AWS and database access sits behind small adapters
that take their clients as arguments. Shipped to Lambda as a layer, installed editable for tests.
"""

__version__ = "0.1.0"

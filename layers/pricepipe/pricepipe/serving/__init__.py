"""Serving: the deployed model (a Lambda layer), request models from the contract, prediction logs.

Imported by the API function on its cold start: only numpy, pydantic and the standard library here.
"""

"""Interop tests: quantlinear against the real AutoRound package (``pytest -m interop``)."""

"""Tools for testing and benchmarking sparknet where one machine must stand in for many.

:mod:`sparknet.testing.netcluster` runs a Spark standalone cluster whose
master, workers and driver each live in their own Linux network namespace,
joined by shaped links (``python -m sparknet.testing.netcluster --help``).
"""
from __future__ import annotations

__all__: list[str] = []

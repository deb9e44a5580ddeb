"""Benchmarks: data loaders, refusal judges, metrics and reports (``scans bench`` / ``scans report``).

Submodules are imported on use; importing this package loads nothing heavy.
"""

"""Benchmarks; `python -m bench [NAME ...]` runs them (see bench/RESULTS.md)."""

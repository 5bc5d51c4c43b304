"""Benchmark harness: Popoto against raw redis-py (and walrus / redis-om when installed).

Run ``make bench`` (or ``python -m ops.bench --help``). See docs/performance.md.
"""

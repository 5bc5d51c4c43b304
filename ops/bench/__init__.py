"""Benchmark harness: Popoto against raw redis-py (and walrus / redis-om when installed).

Imports point down only: __main__ -> runner -> {scenarios, cluster, report} -> timing;
scenarios -> peers -> workload, cluster -> workload; timing and workload import no sibling.

Run ``make bench`` (or ``python -m ops.bench --help``). See docs/performance.md.
"""

"""Benchmark harness: Popoto against the plain floor (what a user writes by hand with
redis-py and msgpack), the same-script floor (Popoto's exact script calls), walrus,
redis-om and popoto 1.10.1 (in its own virtualenv, against its own plain floor).

Imports point down only (the ``bench-dag`` contract in pyproject.toml): __main__ ->
runner -> {scenarios, cluster, report, plots} -> {peers, popoto1} -> {workload,
popoto1_child} -> {timing, plain}; ``timing`` and ``plain`` import no popoto, so the
popoto 1.10.1 runner (``popoto1_child``, started by ``popoto1`` in another interpreter)
can use them.

Run ``make bench`` (or ``python -m popoto.ops.bench --help``). See docs/performance.md.
"""

"""Run the benchmark scenarios side by side and write ``bench/results.json``.

Every scenario times the same operation done by raw redis-py (the floor),
by Popoto and, where they support it, by walrus and redis-om, interleaved
within each repetition; medians of the repetitions are compared. The Redis
Cluster scenarios (``ops/bench/cluster.py``) run after them unless ``--no-cluster``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .cluster import markdown as cluster_markdown
from .cluster import run_cluster
from .report import environment, git_state, markdown, write_json
from .scenarios import Bench
from .timing import QUICK, Sizes
from .workload import read_all

__all__ = ["main", "read_all"]  # read_all re-exported: the tests decode objects with it


@contextmanager
def redis_url() -> Iterator[tuple[str, str]]:
    """REDIS_URL when set, otherwise a private embedded server for the run."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, "REDIS_URL"
        return
    from popoto.testing.server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url, "embedded"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke run)")
    parser.add_argument("--scale", action="store_true",
                        help="also run scenarios 1, 3, 5 at several stored sizes")
    parser.add_argument("--million", action="store_true", help="add 1M objects to --scale")
    parser.add_argument("--no-peers", action="store_true", help="skip walrus and redis-om")
    clusters = parser.add_mutually_exclusive_group()
    clusters.add_argument("--no-cluster", action="store_true",
                          help="skip the Redis Cluster scenarios (c1, c2)")
    clusters.add_argument("--cluster-only", action="store_true",
                          help="run only the Redis Cluster scenarios; their section replaces "
                               "the 'cluster' key of an existing --output file")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per scenario")
    parser.add_argument("--output", default="bench/results.json", help="JSON results path")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.reps:
        sizes = Sizes(**{**sizes.__dict__, "reps": args.reps})
    mode = "quick" if args.quick else "full"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    doc: dict[str, Any] = {}
    if args.cluster_only and os.path.exists(args.output):
        with open(args.output) as fh:
            doc = json.load(fh)
    with redis_url() as (url, origin):
        if not args.cluster_only:
            bench = Bench(url, sizes, not args.no_peers, log)
            env = environment(bench.client, sizes, mode)
            env["server"] = origin
            for note in bench.peer_notes:
                log(f"peers: {note}")
            bench.run(args.scale or args.million, args.million)
            env["duration_s"] = round(time.time() - started, 1)
            doc = {"environment": env, "scenarios": [r.as_dict() for r in bench.results],
                   "memory": bench.memory, "skipped": bench.skipped,
                   "peer_notes": bench.peer_notes}
        if not args.no_cluster:
            log("cluster")
            section = run_cluster(url, sizes, log)
            if "environment" in section:
                section["environment"].update(mode=mode, repetitions=sizes.reps,
                                              git=git_state())
            doc["cluster"] = section
    write_json(args.output, doc)
    if not args.cluster_only:
        print(markdown(doc["scenarios"], doc["memory"], doc["skipped"], doc["environment"]))
    if "cluster" in doc:
        print()
        print(cluster_markdown(doc["cluster"]))
    log(f"wrote {args.output} in {round(time.time() - started, 1)} s")
    return 0

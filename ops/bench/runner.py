"""Run the benchmark scenarios side by side and write ``bench/results.json`` and the plots.

Every scenario times the same user-visible operation done by the plain floor (what a
user writes by hand with redis-py and msgpack, ``plain.Plain``), by the same-script floor
(Popoto's exact script calls, ``workload.Raw``), by Popoto and, where they can do it, by
walrus and redis-om, interleaved within each repetition; popoto 1.10.1 runs the same
scenarios in its own virtualenv against the plain floor timed there (``popoto1``).
Ratios are medians of paired per-repetition throughput ratios. The Redis Cluster
scenarios (``ops/bench/cluster.py``) run after them unless ``--no-cluster``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import popoto1
from .cluster import markdown as cluster_markdown
from .cluster import run_cluster
from .plots import write_plots
from .report import environment, git_state, markdown, missing_peers, write_json
from .scenarios import MEMORY_TARGET, TARGETS, Bench
from .timing import QUICK, Sizes
from .workload import read_all

__all__ = ["DEFAULT_OUTPUT", "main", "read_all"]  # read_all: the tests decode objects with it

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "bench" / "results.json"
DEFAULT_PLOTS = ROOT / "docs"
MILLION, TWO_MILLION = 1_000_000, 2_000_000


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
    parser = argparse.ArgumentParser(prog="python -m popoto.ops.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny counts (smoke run); writes to a temporary directory unless "
                             "--output is given, never to bench/results.json")
    parser.add_argument("--scale", action="store_true",
                        help="add 1M stored objects to the scaling scenarios")
    parser.add_argument("--million", action="store_true",
                        help="add 1M stored objects, and 2M for the range page")
    parser.add_argument("--no-scale", action="store_true", help="skip the scaling scenarios")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip walrus, redis-om and popoto 1.10.1 (reported as disabled)")
    parser.add_argument("--popoto1-python", default=None,
                        help="the interpreter of the popoto 1.10.1 virtualenv (default: "
                             "$POPOTO1_PYTHON or .venv-popoto1/bin/python)")
    clusters = parser.add_mutually_exclusive_group()
    clusters.add_argument("--no-cluster", action="store_true",
                          help="skip the Redis Cluster scenarios (c1, c2)")
    clusters.add_argument("--cluster-only", action="store_true",
                          help="run only the Redis Cluster scenarios; their section replaces "
                               "the 'cluster' key of an existing --output file")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per scenario")
    parser.add_argument("--output", default=None,
                        help="JSON results path (default: bench/results.json; --quick: a "
                             "temporary file)")
    parser.add_argument("--plots", default=None,
                        help="directory of the PNG charts (default: docs/; --quick: beside "
                             "the output)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG")
    return parser


def scale_sizes(sizes: Sizes, args: argparse.Namespace) -> tuple[tuple[int, ...],
                                                                 tuple[int, ...]]:
    """(stored sizes of save/get/top-10, stored sizes of the range page)."""
    if args.no_scale:
        return (), ()
    big = (MILLION,) if args.scale or args.million else ()
    base = tuple(sizes.scale) + big
    ranged = tuple(n for n in sizes.scale if n >= sizes.scale_range_from) + big
    if args.million:
        ranged += (TWO_MILLION,)
    return base, ranged


def resolve_paths(args: argparse.Namespace) -> tuple[str, str | None]:
    """(JSON output path, plots directory or None); a quick run never writes the tracked
    results or the docs' charts."""
    if args.output is None:
        output = (os.path.join(tempfile.mkdtemp(prefix="popoto-bench-"), "results.json")
                  if args.quick else str(DEFAULT_OUTPUT))
    else:
        output = args.output
    if args.quick and os.path.realpath(output) == os.path.realpath(DEFAULT_OUTPUT):
        raise SystemExit("a --quick run does not overwrite the tracked bench/results.json")
    if args.no_plots:
        return output, None
    if args.plots is not None:
        plots = args.plots
    else:
        plots = os.path.dirname(os.path.abspath(output)) if args.quick else str(DEFAULT_PLOTS)
    if args.quick and os.path.realpath(plots) == os.path.realpath(DEFAULT_PLOTS):
        raise SystemExit("a --quick run does not overwrite the charts in docs/")
    return output, plots


def targets_doc(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets table of issue 13 with the measured values."""
    by_id = {r["scenario"]: r for r in doc["scenarios"]}
    out = []
    for r in doc["scenarios"]:
        if r["target"] is not None and not r["scenario"].startswith("scale"):
            out.append({"scenario": r["scenario"], "title": r["title"], "target": r["target"],
                        "measured": r["ratio_vs_plain"], "met": r["target_met"]})
    mem = doc.get("memory", {}).get("popoto", {})
    if "ratio_popoto_over_plain" in mem:
        out.append({"scenario": "9", "title": "memory per object / plain",
                    "target": f"<= {MEMORY_TARGET:.2f}",
                    "measured": mem["ratio_popoto_over_plain"], "met": mem["target_met"]})
    missing = [t for t in TARGETS if not any(k.split("/")[0] == t for k in by_id)]
    for t in missing:
        out.append({"scenario": t, "target": TARGETS[t].text(), "measured": None, "met": None})
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.reps:
        sizes = Sizes(**{**sizes.__dict__, "reps": args.reps})
    mode = "quick" if args.quick else "full"
    output, plots_dir = resolve_paths(args)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    doc: dict[str, Any] = {}
    if args.cluster_only and os.path.exists(output):
        with open(output) as fh:
            doc = json.load(fh)
    with redis_url() as (url, origin):
        if not args.cluster_only:
            bench = Bench(url, sizes, not args.no_peers, log,
                          args.popoto1_python or popoto1.default_python())
            env = environment(bench.client, sizes, mode)
            env["server"] = origin
            scale, ranged = scale_sizes(sizes, args)
            env["scaling"] = {"save_get_top": list(scale), "range_page": list(ranged)}
            bench.run(scale, ranged)
            env["duration_s"] = round(time.time() - started, 1)
            doc = {"environment": env, "peers": bench.peer_status,
                   "scenarios": [r.as_dict() for r in bench.results],
                   "memory": bench.memory, "skipped": bench.skipped}
            doc["targets"] = targets_doc(doc)
            for line in missing_peers(doc):
                log(line)
        if not args.no_cluster:
            log("cluster")
            section = run_cluster(url, sizes, log)
            if "environment" in section:
                section["environment"].update(mode=mode, repetitions=sizes.reps,
                                              git=git_state())
            doc["cluster"] = section
    if plots_dir is not None and "scenarios" in doc:
        doc["plots"] = write_plots(doc, plots_dir)
        if "skipped" in doc["plots"]:
            log(f"PLOTS NOT WRITTEN: {doc['plots']['skipped']}")
    write_json(output, doc)
    if not args.cluster_only:
        print(markdown(doc))
    if "cluster" in doc:
        print()
        print(cluster_markdown(doc["cluster"]))
    log(f"wrote {output} in {round(time.time() - started, 1)} s")
    return 0

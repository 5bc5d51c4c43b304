"""Timing machinery shared by every scenario: run sizes, impls, interleaved repetitions,
medians and paired per-repetition ratios.

The bottom of ``popoto.ops.bench``: imports nothing from the package.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PLAIN, SCRIPT, POPOTO = "plain", "same-script", "popoto"
"""The impl names of the primary floor (what a user writes by hand, ``plain.Plain``), the
same-script floor (``workload.Raw``) and Popoto."""


@dataclass(frozen=True)
class Sizes:
    """Object and operation counts of one run."""

    saves: int = 2000
    bulk: tuple[int, ...] = (10_000, 100_000)
    gets: int = 2000
    stored: int = 100_000
    range_size: int = 1000
    range_queries: int = 20
    combo_width: int = 5000  # range AND color: a score range this wide, ~1% of it matches
    combo_queries: int = 30
    page_width: int = 10_000  # order_by + limit on a range: the range, the page
    page_limit: int = 20
    page_queries: int = 50
    top_queries: int = 500
    color_queries: int = 20
    all_size: int = 5000
    counts: int = 2000
    memory: int = 10_000
    scale: tuple[int, ...] = (1_000, 20_000, 100_000)  # --scale adds 1M, --million 1M and 2M
    scale_range_from: int = 20_000  # the range page scales from this stored size on
    reps: int = 7
    peer_divisor: int = 10  # peers run 1/10 of the ops in the slow read scenarios
    cluster_bulk: int = 10_000
    cluster_stored: int = 10_000
    cluster_queries: int = 200


QUICK = Sizes(saves=30, bulk=(300,), gets=30, stored=1500, range_size=100, range_queries=2,
              combo_width=600, combo_queries=2, page_width=600, page_limit=5, page_queries=5,
              top_queries=10, color_queries=2, all_size=500, counts=50, memory=300,
              scale=(200, 1500), scale_range_from=1500, reps=2, peer_divisor=2,
              cluster_bulk=200, cluster_stored=600, cluster_queries=5)


@dataclass(frozen=True)
class Target:
    """Popoto's throughput over the plain floor's (median of paired repetitions) >= limit."""

    limit: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.limit

    def text(self) -> str:
        return f">= {self.limit:.2f}"


@dataclass
class Impl:
    name: str
    run: Callable[[], Any]
    ops: int
    setup: Callable[[], Any] | None = None


@dataclass
class Result:
    """One scenario: the timings of every impl and, per impl, the floor its ratio uses.

    ``floors`` maps an impl to the floor it is compared with: Popoto and the in-process
    peers to ``plain``; the popoto 1.10.1 peer to the plain floor timed in its own process.
    """

    scenario: str
    title: str
    stored: int
    target: Target | None
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    floors: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)  # peer -> why it cannot run

    def per_op(self, impl: str) -> float | None:
        t = self.timings.get(impl)
        return None if t is None else t["per_op_us"]

    def ratio(self, impl: str, floor: str | None = None) -> float | None:
        """Throughput of ``impl`` over its floor's: median of the per-repetition ratios."""
        return throughput_ratio(self.timings, impl, floor or self.floors.get(impl, PLAIN))

    @property
    def ratio_vs_plain(self) -> float | None:
        return self.ratio(POPOTO, PLAIN)

    @property
    def popoto_overhead(self) -> float | None:
        """Popoto over the same-script floor (Popoto's own Python; today's old floor)."""
        return self.ratio(POPOTO, SCRIPT)

    def peer_ratios(self) -> dict[str, float]:
        out = {}
        for name in self.timings:
            if name in (PLAIN, SCRIPT, POPOTO) or name in self.floors.values():
                continue
            r = self.ratio(name)
            if r is not None:
                out[name] = r
        return out

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ratio_vs_plain
        peers = self.peer_ratios()
        return {
            "scenario": self.scenario,
            "title": self.title,
            "stored_objects": self.stored,
            "timings": self.timings,
            "floors": {POPOTO: PLAIN, **self.floors},
            "ratio_vs_plain": ratio,
            "ratio_of_medians_vs_plain": None if not self.per_op(POPOTO) or not self.per_op(
                PLAIN) else self.per_op(PLAIN) / self.per_op(POPOTO),
            "popoto_overhead": self.popoto_overhead,
            "peer_ratios": peers,
            "peers_unsupported": self.unsupported,
            "target": None if self.target is None else self.target.text(),
            "target_met": None if self.target is None or ratio is None
            else self.target.met(ratio),
            "ahead_of_peers": None if not peers or ratio is None
            else all(ratio > v for v in peers.values()),
            "notes": self.notes,
        }


def measure(impls: list[Impl], reps: int) -> dict[str, dict[str, Any]]:
    """Run every impl ``reps`` times, interleaved (order flipped every repetition); medians."""
    # plain and popoto always run back to back (their ratio is taken per repetition)
    impls = sorted(impls, key=lambda i: {PLAIN: 0, POPOTO: 1, SCRIPT: 2}.get(i.name, 3))
    samples: dict[str, list[float]] = {i.name: [] for i in impls}
    for rep in range(reps):
        for impl in impls if rep % 2 == 0 else impls[::-1]:  # no side always goes first
            if impl.setup is not None:
                impl.setup()
            # the harness's own data (up to 1M rows) must not make the timed code's garbage
            # collections slower: freeze what exists, so only objects the run makes are scanned
            gc.collect()
            gc.freeze()
            try:
                start = time.perf_counter()
                impl.run()
                samples[impl.name].append(time.perf_counter() - start)
            finally:
                gc.unfreeze()
    out = {}
    for impl in impls:
        med = statistics.median(samples[impl.name])
        out[impl.name] = {"ops": impl.ops, "median_s": med, "per_op_us": med / impl.ops * 1e6,
                          "samples_s": samples[impl.name]}
    return out


def paired_ratio(timings: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    """Median over repetitions of (a per op) / (b per op), each pair from one repetition."""
    ta, tb = timings.get(a), timings.get(b)
    if ta is None or tb is None or not ta["samples_s"] or not tb["samples_s"]:
        return None
    return statistics.median((x / ta["ops"]) / (y / tb["ops"])
                             for x, y in zip(ta["samples_s"], tb["samples_s"]))


def throughput_ratio(timings: dict[str, dict[str, Any]], impl: str, floor: str
                     ) -> float | None:
    """Throughput of ``impl`` over ``floor``'s (> 1: faster than the floor), paired: the
    median over repetitions of (floor time per op) / (impl time per op)."""
    return paired_ratio(timings, floor, impl)

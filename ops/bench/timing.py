"""Timing machinery shared by every scenario: run sizes, impls, interleaved repetitions,
medians and paired per-repetition ratios.

The bottom of ``ops.bench``: imports nothing from the package.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RAW, PLAIN, POPOTO = "raw", "raw-plain", "popoto"


@dataclass(frozen=True)
class Sizes:
    """Object and operation counts of one run."""

    saves: int = 2000
    bulk: tuple[int, ...] = (10_000, 100_000)
    gets: int = 2000
    stored: int = 100_000
    range_size: int = 1000
    range_queries: int = 20
    top_queries: int = 500
    color_queries: int = 20
    all_size: int = 5000
    counts: int = 2000
    memory: int = 10_000
    scale: tuple[int, ...] = (1_000, 100_000)
    reps: int = 7
    peer_divisor: int = 10  # peers run 1/10 of the ops in the slow read scenarios
    cluster_bulk: int = 10_000
    cluster_stored: int = 10_000
    cluster_queries: int = 200


QUICK = Sizes(saves=30, bulk=(300,), gets=30, stored=1500, range_size=100, range_queries=2,
              top_queries=10, color_queries=2, all_size=500, counts=50, memory=300,
              scale=(200, 1500), reps=2, peer_divisor=2, cluster_bulk=200, cluster_stored=600,
              cluster_queries=5)


@dataclass(frozen=True)
class Target:
    metric: str  # "throughput": raw_time/popoto_time >= limit; "time": popoto/raw <= limit
    limit: float

    def met(self, time_ratio: float) -> bool:
        if self.metric == "throughput":
            return 1 / time_ratio >= self.limit
        return time_ratio <= self.limit

    def text(self) -> str:
        if self.metric == "throughput":
            return f"throughput >= {self.limit:.2f}x raw"
        return f"time <= {self.limit:g}x raw"


@dataclass
class Impl:
    name: str
    run: Callable[[], Any]
    ops: int
    setup: Callable[[], Any] | None = None


@dataclass
class Result:
    scenario: str
    title: str
    stored: int
    target: Target | None
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def per_op(self, impl: str) -> float | None:
        t = self.timings.get(impl)
        return None if t is None else t["per_op_us"]

    @property
    def time_ratio(self) -> float | None:
        """Median over repetitions of popoto/raw, each pair timed back to back.

        The round trip of this shared machine drifts by tens of percent within a
        minute; a ratio of two medians taken at different moments carries that drift,
        a median of paired ratios cancels most of it.
        """
        raw, pop = self.timings.get(RAW), self.timings.get(POPOTO)
        if raw is None or pop is None:
            return None
        pairs = [(p / pop["ops"]) / (r / raw["ops"])
                 for r, p in zip(raw["samples_s"], pop["samples_s"])]
        return statistics.median(pairs)

    def as_dict(self) -> dict[str, Any]:
        ratio = self.time_ratio
        plain, pop = self.per_op(PLAIN), self.per_op(POPOTO)
        peers = {n: t["per_op_us"] for n, t in self.timings.items()
                 if n not in (RAW, PLAIN, POPOTO)}
        return {
            "scenario": self.scenario,
            "title": self.title,
            "stored_objects": self.stored,
            "timings": self.timings,
            "ratio_popoto_over_raw_time": ratio,
            "ratio_of_medians": None if not self.per_op(RAW) or pop is None
            else pop / self.per_op(RAW),
            "ratio_popoto_over_raw_throughput": None if not ratio else 1 / ratio,
            "ratio_popoto_over_plain_time": None if not plain or pop is None else pop / plain,
            "target": None if self.target is None else self.target.text(),
            "target_met": None if self.target is None or ratio is None
            else self.target.met(ratio),
            "faster_than_peers": None if not peers or pop is None
            else all(pop < v for v in peers.values()),
            "notes": self.notes,
        }


def measure(impls: list[Impl], reps: int) -> dict[str, dict[str, Any]]:
    """Run every impl ``reps`` times, interleaved (order flipped every repetition); medians."""
    # raw and popoto always run back to back (their ratio is taken per repetition)
    impls = sorted(impls, key=lambda i: {RAW: 0, POPOTO: 1}.get(i.name, 2))
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
    if ta is None or tb is None:
        return None
    return statistics.median((x / ta["ops"]) / (y / tb["ops"])
                             for x, y in zip(ta["samples_s"], tb["samples_s"]))

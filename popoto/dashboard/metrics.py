"""``/metrics``: the state of Popoto's background layer in the Prometheus text format.

Read from Redis at every scrape (so every worker's numbers are summed, and a
scrape of any dashboard process sees the same), by one ``prometheus_client``
collector in a registry of the dashboard's own. Names (see docs/operations.md):

tasks (recorded by every worker, :mod:`popoto.tasks.stats`)
    ``popoto_tasks_total{task,state}``, ``popoto_task_duration_seconds{task,state}``
    (histogram), ``popoto_task_last_run_timestamp_seconds{task}``
jobs (the recent jobs of :func:`popoto.tasks.jobs.recent`)
    ``popoto_jobs{kind,status}``; per job not yet finished:
    ``popoto_job_progress_ratio``, ``popoto_job_done``, ``popoto_job_total``
    ``{job_id,kind,model,phase,status}``
streams (:func:`popoto.workers.streams.stream_info`)
    ``popoto_stream_length{stream}``, ``popoto_stream_dead_letters{stream}``,
    ``popoto_stream_group_consumers``, ``popoto_stream_group_pending``,
    ``popoto_stream_group_lag``, ``popoto_stream_group_oldest_pending_idle_seconds``
    ``{stream,group}``
models (the last index check, :mod:`popoto.tasks.health`)
    ``popoto_model_instances{model}``, ``popoto_index_problems{model,kind}``,
    ``popoto_index_last_check_timestamp_seconds{model}``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from popoto.models.maintenance import class_set_size
from popoto.registry import label_of
from popoto.tasks import health, jobs, stats

from . import data

#: kinds of index problem a check report counts
PROBLEM_KINDS = ("total", "orphans", "missing", "wrong", "owner_records")
JOB_LABELS = ["job_id", "kind", "model", "phase", "status"]
GROUP_LABELS = ["stream", "group"]


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def task_metrics() -> Iterator[Metric]:
    counts = CounterMetricFamily("popoto_tasks", "Tasks run by the workers, by final state",
                                 labels=["task", "state"])
    durations = HistogramMetricFamily("popoto_task_duration_seconds",
                                      "Run time of tasks, by final state",
                                      labels=["task", "state"])
    for (task, state), entry in sorted(stats.task_stats().items()):
        counts.add_metric([task, state], entry["count"])
        cumulative, buckets = 0, []
        for bound in [*map(repr, stats.BUCKETS), "+Inf"]:
            cumulative += entry["buckets"].get(bound, 0)
            buckets.append((bound, cumulative))
        durations.add_metric([task, state], buckets, sum_value=entry["sum"])
    last = _gauge("popoto_task_last_run_timestamp_seconds",
                  "When a task last finished (Unix time)", ["task"])
    for task, run in sorted(stats.last_runs().items()):
        last.add_metric([task], float(run.get("at", 0)))
    yield from (counts, durations, last)


def job_metrics() -> Iterator[Metric]:
    recent = [data.job_view(s) for s in jobs.recent(jobs.RECENT_JOBS)]
    by_status = _gauge("popoto_jobs", "Recent jobs by kind and status", ["kind", "status"])
    for (kind, status), n in sorted(Counter((j.get("kind", ""), j["status"])
                                            for j in recent).items()):
        by_status.add_metric([kind, status], n)
    ratio = _gauge("popoto_job_progress_ratio", "Progress of unfinished jobs (0-1)",
                   JOB_LABELS)
    done = _gauge("popoto_job_done", "Items done by unfinished jobs", JOB_LABELS)
    total = _gauge("popoto_job_total", "Items of unfinished jobs", JOB_LABELS)
    for j in recent:
        if j["final"]:
            continue
        labels = [j["id"], j.get("kind", ""), j.get("model", ""), j["phase"], j["status"]]
        ratio.add_metric(labels, j["percent"] / 100)
        done.add_metric(labels, j["done"])
        total.add_metric(labels, j["total"])
    yield from (by_status, ratio, done, total)


def stream_metrics() -> Iterator[Metric]:
    length = _gauge("popoto_stream_length", "Entries in an event stream", ["stream"])
    dead = _gauge("popoto_stream_dead_letters", "Entries in a stream's dead letters",
                  ["stream"])
    consumers = _gauge("popoto_stream_group_consumers", "Consumers of a group", GROUP_LABELS)
    pending = _gauge("popoto_stream_group_pending", "Entries delivered, not acknowledged",
                     GROUP_LABELS)
    lag = _gauge("popoto_stream_group_lag", "Entries not yet delivered to a group "
                 "(counted up to popoto.workers.streams.LAG_LIMIT)", GROUP_LABELS)
    idle = _gauge("popoto_stream_group_oldest_pending_idle_seconds",
                  "Idle time of a group's oldest pending entry", GROUP_LABELS)
    for info in data.streams():
        length.add_metric([info.key], info.length)
        dead.add_metric([info.key], info.dead_letters)
        for g in info.groups:
            labels = [info.key, g.name]
            consumers.add_metric(labels, g.consumers)
            pending.add_metric(labels, g.pending)
            lag.add_metric(labels, g.lag)
            idle.add_metric(labels, g.oldest_pending_idle_ms / 1000)
    yield from (length, dead, consumers, pending, lag, idle)


def model_metrics() -> Iterator[Metric]:
    checks = health.last_checks()
    instances = _gauge("popoto_model_instances", "Instances of a model (its class set)",
                       ["model"])
    problems = _gauge("popoto_index_problems", "Index problems found by the model's last "
                      "check, by kind", ["model", "kind"])
    checked = _gauge("popoto_index_last_check_timestamp_seconds",
                     "When the model's indexes were last checked (Unix time)", ["model"])
    for model in data.models():
        label = label_of(model)
        instances.add_metric([label], class_set_size(model))
        check = checks.get(label)
        if check is None:
            continue
        report: dict[str, Any] = check.get("report") or {}
        for kind in PROBLEM_KINDS:
            problems.add_metric([label, kind], float(report.get(kind, 0) or 0))
        checked.add_metric([label], float(check.get("at", 0)))
    yield from (instances, problems, checked)


class PopotoCollector(Collector):
    """Every metric above, read at collection time."""

    def collect(self) -> Iterator[Metric]:
        yield from task_metrics()
        yield from job_metrics()
        yield from stream_metrics()
        yield from model_metrics()


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PopotoCollector())
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry`` (blocking: Redis reads)."""
    return generate_latest(registry)

"""``popoto-ops`` / ``python -m ops``: the operator's command line.

Commands (exit code 1 when a problem is found, 2 for usage errors):

* ``check-indexes [MODEL ...]`` read-only index health report; 1 if any problem;
* ``clean-indexes [MODEL ...]`` remove index entries nobody owns;
* ``rebuild-indexes MODEL [--async [--wait]]`` repair every index in place, here with
  a progress bar, or as a Celery job (prints the job id);
* ``jobs [JOB_ID]`` progress of background jobs; 1 if the job failed;
* ``streams [--stream NAME]`` length, groups, pending, lag and dead letters of the
  event streams; 1 if there are dead letters, pending entries idle too long or a
  lag above ``--max-lag``;
* ``replay-dead-letters --stream NAME [--count N]`` put dead letters back.

Models are found by label (``app.Model`` or the class name) once their modules
are imported: ``--models app.models`` or ``POPOTO_MODEL_MODULES``. Without
MODEL arguments, every registered model is processed. A sharded model (tag
groups) is processed over all its groups; counts are summed over them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

import redis

import popoto
from popoto.exceptions import PopotoError
from popoto.models.base import Model
from popoto.models.maintenance import class_set_size
from popoto.registry import all_models, label_of
from popoto.redis_db import get_client

OK, PROBLEM, USAGE = 0, 1, 2


# --- output ---------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal, periodic plain lines otherwise."""

    def __init__(self, stream: TextIO, label: str, width: int = 30,
                 every: float = 2.0) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.every = every
        self.tty = stream.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def update(self, done: int, total: int, note: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.tty and now - self._last < self.every:
            return
        self._last = now
        total = max(total, done, 1)
        filled = int(self.width * done / total)
        bar = "#" * filled + "." * (self.width - filled)
        rate = done / max(now - self._started, 1e-9)
        text = (f"{self.label} [{bar}] {100 * done / total:5.1f}% {done}/{total} "
                f"{rate:,.0f}/s {note}".rstrip())
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _models(names: Sequence[str]) -> list[type[Model]]:
    if names:
        return [popoto.get_model(n) for n in names]
    return sorted(all_models(), key=label_of)


def _emit(out: TextIO, as_json: bool, payload: Any, lines: Iterable[str]) -> None:
    if as_json:
        out.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        for line in lines:
            out.write(line + "\n")


# --- index commands ---------------------------------------------------------------

def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    reports = {label_of(m): m.check_indexes(batch_size=args.batch_size)
               for m in _models(args.models)}
    lines = []
    groups = {label_of(m): len(m._meta.groups) for m in _models(args.models)
              if m._meta.sharded}
    for label, rep in reports.items():
        status = "ok" if rep["total"] == 0 else "PROBLEMS"
        lines.append(f"{label}: {status} total={rep['total']} orphans={rep.get('orphans', 0)} "
                     f"missing={rep.get('missing', 0)} wrong={rep.get('wrong', 0)} "
                     f"owner_records={rep.get('owner_records', 0)} "
                     f"instances={rep.get('instances', 0)}"
                     + (f" groups={groups[label]}" if label in groups else ""))
    if not reports:
        lines.append("no registered models (import them with --models)")
    _emit(out, args.json, reports, lines)
    return PROBLEM if any(r["total"] for r in reports.values()) else OK


def cmd_clean(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    removed = {}
    for model in _models(args.models):
        removed[label_of(model)] = model.clean_indexes(batch_size=args.batch_size)
    _emit(out, args.json, removed,
          [f"{label}: removed {n} index entries" for label, n in removed.items()])
    return OK


def rebuild_with_progress(model: type[Model], batch_size: int, err: TextIO) -> int:
    """The chunk API driven here: reindex every instance hash, then clean every index key.

    A sharded model's scan covers every tag group (reindex_keys works group by
    group); every group is reindexed before any index key is cleaned.
    """
    total = class_set_size(model)
    bar = Progress(err, f"{model.__name__} reindex")
    cursor, done = 0, 0
    while True:
        cursor, found = model.scan_instance_keys(cursor, batch_size)
        if found:
            done += model.reindex_keys(found)
            bar.update(done, total)
        if cursor == 0:
            break
    bar.update(done, total, force=True)
    bar.close()
    index_keys = model.index_keys()
    bar = Progress(err, f"{model.__name__} clean")
    removed = 0
    for position, index_key in enumerate(index_keys, 1):
        removed += model.clean_index_key(index_key, batch_size)
        bar.update(position, len(index_keys), f"removed={removed}")
    bar.update(len(index_keys), len(index_keys), f"removed={removed}", force=True)
    bar.close()
    return done


def _job_line(state: dict[str, Any]) -> str:
    return (f"{state.get('id')} {state.get('kind')} {state.get('model')} "
            f"{state.get('status')} phase={state.get('phase')} "
            f"done={state.get('done', 0)}/{state.get('total', 0)} "
            f"removed={state.get('removed', 0)}"
            + (f" problems={state['problems']}" if "problems" in state else "")
            + (f" error={state['error']}" if "error" in state else ""))


def wait_for_job(job_id: str, err: TextIO, timeout: float | None = None,
                 poll: float = 0.5) -> dict[str, Any]:
    """Follow a job's progress hash until it ends (or ``timeout``), drawing a progress bar."""
    from tasks import jobs

    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(err, f"job {job_id[:8]}")
    state: dict[str, Any] = {}
    while deadline is None or time.monotonic() < deadline:
        state = jobs.get(job_id) or {}
        if state:
            bar.update(state.get("done", 0), state.get("total", 0), state.get("phase", ""),
                       force=state.get("status") != "running")
            if state.get("status") != "running":
                break
        time.sleep(poll)
    bar.close()
    return state


def cmd_rebuild(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    model = popoto.get_model(args.model)
    if not args.async_:
        started = time.monotonic()
        count = rebuild_with_progress(model, args.batch_size, err)
        seconds = time.monotonic() - started
        out.write(f"{label_of(model)}: rebuilt the indexes of {count} instances in "
                  f"{seconds:.1f}s\n")
        return OK
    from tasks import app

    result = app.send_task("popoto.maintenance.rebuild_indexes", (label_of(model),),
                           {"chunk_size": args.batch_size})
    out.write(f"{result.id}\n")
    if not args.wait:
        err.write(f"enqueued rebuild of {label_of(model)} as job {result.id} "
                  f"(follow it: popoto-ops jobs {result.id})\n")
        return OK
    state = wait_for_job(result.id, err, timeout=args.timeout)
    if not state or state.get("status") == "running":
        err.write(f"job {result.id} still running after {args.timeout}s "
                  "(no worker consuming the maintenance queue?)\n")
        return PROBLEM
    out.write(_job_line(state) + "\n")
    return OK if state.get("status") == "done" else PROBLEM


def cmd_jobs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tasks import jobs

    if args.job_id:
        state = jobs.get(args.job_id)
        if state is None:
            err.write(f"no job {args.job_id!r}\n")
            return PROBLEM
        states = [state]
    else:
        states = jobs.recent(args.limit)
    _emit(out, args.json, states, [_job_line(s) for s in states] or ["no jobs"])
    return PROBLEM if any(s.get("status") == "failed" for s in states) else OK


# --- stream commands --------------------------------------------------------------

def cmd_streams(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from workers.streams import iter_streams, stream_info, stream_key

    client = get_client()
    names = [stream_key(s) for s in args.stream] if args.stream else list(iter_streams(client))
    infos = [stream_info(client, name) for name in names]
    problems: list[str] = []
    lines: list[str] = []
    for info in infos:
        lines.append(f"{info.key}: length={info.length} dead_letters={info.dead_letters} "
                     f"groups={len(info.groups)}")
        if info.dead_letters:
            problems.append(f"{info.key} has {info.dead_letters} dead letters")
        for g in info.groups:
            lag = f"{g.lag}" if g.lag_exact else f">={g.lag}"
            lines.append(f"  group {g.name}: consumers={g.consumers} pending={g.pending} "
                         f"lag={lag} oldest_pending_idle_ms={g.oldest_pending_idle_ms} "
                         f"last_delivered={g.last_delivered}")
            if g.pending and g.oldest_pending_idle_ms > args.max_pending_idle_ms:
                problems.append(f"{info.key} group {g.name}: a pending entry idle for "
                                f"{g.oldest_pending_idle_ms} ms (no live consumer?)")
            if args.max_lag is not None and g.lag > args.max_lag:
                problems.append(f"{info.key} group {g.name}: lag {lag} > {args.max_lag}")
    if not infos:
        lines.append("no event streams")
    lines += [f"PROBLEM: {p}" for p in problems]
    payload = [{"key": i.key, "length": i.length, "dead_letters": i.dead_letters,
                "groups": [vars(g) for g in i.groups]} for i in infos]
    _emit(out, args.json, {"streams": payload, "problems": problems}, lines)
    return PROBLEM if problems else OK


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from workers.streams import dead_letter_key, replay_dead_letters, stream_key

    key = stream_key(args.stream)
    replayed = replay_dead_letters(get_client(), key, args.count)
    out.write(f"replayed {replayed} dead letters from {dead_letter_key(key)} to {key}\n")
    return OK


# --- entry point ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popoto-ops", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default=None,
                        help="data Redis (default: REDIS_URL)")
    parser.add_argument("--models", dest="model_modules",
                        default=os.environ.get("POPOTO_MODEL_MODULES", ""),
                        help="comma-separated modules defining models "
                             "(default: POPOTO_MODEL_MODULES)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-indexes", help="read-only index health report")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--batch-size", type=int, default=1000)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("clean-indexes", help="remove index entries nobody owns")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--batch-size", type=int, default=1000)
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("rebuild-indexes", help="repair every index of a model in place")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--async", dest="async_", action="store_true",
                   help="enqueue a Celery job instead and print its id")
    p.add_argument("--wait", action="store_true", help="with --async: follow the job")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after")
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("jobs", help="progress of background jobs")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("streams", help="event streams, consumer groups and dead letters")
    p.add_argument("--stream", action="append", default=[], help="only this stream")
    p.add_argument("--max-lag", type=int, default=None,
                   help="a group further behind than this is a problem")
    p.add_argument("--max-pending-idle-ms", type=int, default=300_000,
                   help="a pending entry idle longer than this is a problem")
    p.set_defaults(func=cmd_streams)

    p = sub.add_parser("replay-dead-letters", help="put dead letters back on their stream")
    p.add_argument("--stream", required=True)
    p.add_argument("--count", type=int, default=None, help="at most this many (oldest first)")
    p.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 problem found, 2 usage/config error)."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.redis_url:
        popoto.configure(url=args.redis_url)
    func: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.func
    try:
        for module in (m.strip() for m in args.model_modules.split(",")):
            if module:
                importlib.import_module(module)
        return func(args, out, err)
    except (PopotoError, ImportError, redis.RedisError) as exc:
        err.write(f"popoto-ops: {exc}\n")
        return USAGE


if __name__ == "__main__":
    sys.exit(main())

"""``popoto-ops`` / ``python -m popoto.ops``: the operator's command line.

Commands (exit codes: see :data:`EXIT_CODES`, also in ``--help``):

* ``check-indexes [MODEL ...]`` read-only index health report; 1 if any problem;
* ``clean-indexes [MODEL ...]`` remove index entries nobody owns;
* ``rebuild-indexes MODEL [--async [--wait [--timeout S]]]`` repair every index in
  place, or as a Celery job (prints the job id); ``--wait``
  follows the job (or, when a rebuild of the model already runs, that one) for at most
  ``--timeout`` seconds (default 600);
* ``jobs [JOB_ID]`` progress of background jobs; 1 if the job failed or is unknown;
* ``streams [--stream NAME]`` length, groups, pending, lag and dead letters of the
  event streams; 1 if there are dead letters, pending entries idle too long or a
  lag above ``--max-lag``;
* ``replay-dead-letters --stream NAME [--count N]`` put dead letters back;
* ``dashboard [--host H] [--port P]`` serve the operations dashboard
  (:mod:`popoto.dashboard`, on 127.0.0.1:8050 by default) until Ctrl-C / SIGTERM.

Models are found by label (``app.Model`` or the class name) once their modules
are imported: ``--models app.models`` or ``POPOTO_MODEL_MODULES``. Without
MODEL arguments, every registered model is processed (none loaded is an error).
A sharded model (tag groups) is processed over all its groups; counts are summed
over them. Every error is one line on stderr (``popoto-ops: ...``), never a
traceback. Global options (``--redis-url``, ``--models``, ``--json``) go before or
after the command. Check, clean and rebuild draw their progress, with rate and ETA,
on stderr (:mod:`popoto.ops.progress`): a live bar on a terminal, plain lines elsewhere.
Every command is registered in :func:`build_parser`, through its ``command()``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TextIO

import redis

import popoto
from popoto.exceptions import PopotoError
from popoto.extras import DISTRIBUTION
from popoto.models.base import Model
from popoto.registry import all_models, label_of
from popoto.redis_db import get_client, mask_url

from .cli_dashboard import add_dashboard_options, cmd_dashboard
from .progress import Progress, check_with_progress, clean_with_progress, rebuild_with_progress

OK, PROBLEM, USAGE, INTERRUPTED = 0, 1, 2, 130
#: ``rebuild-indexes --wait`` gives up after this many seconds unless ``--timeout`` says
DEFAULT_WAIT_TIMEOUT = 600.0

EXIT_CODES = f"""\
exit codes:
  0    success, no problem found
  1    a problem was found: index problems, a failed or unknown job, dead letters,
       stuck or lagging stream groups, or --wait gave up after --timeout
  2    usage or configuration error (bad option or value, bad Redis URL, a module
       that does not import, unknown model or stream, no models loaded, Redis
       unreachable): one line on stderr, no traceback
  {INTERRUPTED}  interrupted (Ctrl-C)
"""

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


class UsageError(Exception):
    """A bad argument or setting: reported as one line, exit code 2."""


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, passwords of URLs in it masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__

    def mask(match: re.Match[str]) -> str:
        try:
            return mask_url(match[0])
        except ValueError:
            return "<url>"

    return _URL.sub(mask, text)


# --- output ---------------------------------------------------------------------

def _models(names: Sequence[str]) -> list[type[Model]]:
    if names:
        return [popoto.get_model(n) for n in names]
    models = sorted(all_models(), key=label_of)
    if not models:
        raise UsageError("no models loaded: name the modules that define them with "
                         "--models app.models (or set POPOTO_MODEL_MODULES)")
    return models


def _emit(out: TextIO, as_json: bool, payload: Any, lines: Iterable[str]) -> None:
    if as_json:
        out.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        for line in lines:
            out.write(line + "\n")


# --- index commands ---------------------------------------------------------------

def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    models = _models(args.models)
    from popoto.tasks.health import record_check  # tasks: the celery extra, only when used

    reports = {label_of(m): check_with_progress(m, args.batch_size, err) for m in models}
    for label, report in reports.items():
        record_check(label, report, source="popoto-ops check-indexes")
    lines = []
    groups = {label_of(m): len(m._meta.groups) for m in models if m._meta.sharded}
    for label, rep in reports.items():
        status = "ok" if rep["total"] == 0 else "PROBLEMS"
        lines.append(f"{label}: {status} total={rep['total']} orphans={rep.get('orphans', 0)} "
                     f"missing={rep.get('missing', 0)} wrong={rep.get('wrong', 0)} "
                     f"owner_records={rep.get('owner_records', 0)} "
                     f"instances={rep.get('instances', 0)}"
                     + (f" groups={groups[label]}" if label in groups else ""))
    _emit(out, args.json, reports, lines)
    return PROBLEM if any(r["total"] for r in reports.values()) else OK


def cmd_clean(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    removed = {}
    for model in _models(args.models):
        removed[label_of(model)] = clean_with_progress(model, args.batch_size, err)
    _emit(out, args.json, removed,
          [f"{label}: removed {n} index entries" for label, n in removed.items()])
    return OK


def _job_line(state: dict[str, Any]) -> str:
    if state.get("status") in ("queued", "skipped"):
        return (f"{state.get('id')} {state.get('kind')} {state.get('model')} "
                f"{state.get('status')}"
                + (f" running_job_id={state['running_job_id']}"
                   if "running_job_id" in state else "")
                + (f" error={state['error']}" if "error" in state else ""))
    return (f"{state.get('id')} {state.get('kind')} {state.get('model')} "
            f"{state.get('status')} phase={state.get('phase')} "
            f"done={state.get('done', 0)}/{state.get('total', 0)} "
            f"removed={state.get('removed', 0)}"
            + (f" problems={state['problems']}" if "problems" in state else "")
            + (f" error={state['error']}" if "error" in state else ""))


#: a job in one of these states will not change any more
FINAL_STATUSES = ("done", "failed", "skipped")


def wait_for_job(job_id: str, err: TextIO, timeout: float | None = DEFAULT_WAIT_TIMEOUT,
                 poll: float = 0.5) -> dict[str, Any]:
    """Follow a job's progress hash until it ends (or ``timeout``), drawing a progress bar.

    A job skipped because another run of it held the lease is left for that run
    (``running_job_id``), which is followed instead. Returns the last state seen
    (empty if none): still ``queued`` or ``running`` means the time ran out.
    """
    from popoto.tasks import jobs

    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(err, f"job {job_id[:8]}")
    followed = {job_id}
    state: dict[str, Any] = {}
    try:
        while deadline is None or time.monotonic() < deadline:
            state = jobs.get(job_id) or {}
            status = state.get("status")
            holder = state.get("running_job_id")
            if status == "skipped" and holder and holder not in followed:
                bar.close()
                err.write(f"a {state.get('kind')} of {state.get('model')} is already running "
                          f"as job {holder}: following it\n")
                job_id = holder
                followed.add(holder)
                bar = Progress(err, f"job {holder[:8]}")
                continue
            if status not in (None, "queued"):
                bar.update(state.get("done", 0), state.get("total", 0),
                           state.get("phase", ""), force=status != "running")
            if status in FINAL_STATUSES:
                break
            time.sleep(poll)
    finally:
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
    from popoto.tasks.submit import submit_job

    label = label_of(model)
    job_id = submit_job("rebuild", label, {"chunk_size": args.batch_size})
    out.write(f"{job_id}\n")
    out.flush()
    if not args.wait:
        err.write(f"enqueued rebuild of {label} as job {job_id} "
                  f"(follow it: popoto-ops jobs {job_id})\n")
        return OK
    state = wait_for_job(job_id, err, timeout=args.timeout)
    status = state.get("status")
    if status in (None, "queued"):
        err.write(f"job {job_id} not started after {args.timeout:g}s "
                  "(no worker consuming the maintenance queue?)\n")
        return PROBLEM
    if status == "running":
        err.write(f"job {state['id']} still running after {args.timeout:g}s "
                  f"(follow it: popoto-ops jobs {state['id']})\n")
        return PROBLEM
    out.write(_job_line(state) + "\n")
    if status == "skipped":
        err.write(f"job {job_id} was skipped: another rebuild of {label} held the lease\n")
    return OK if status == "done" else PROBLEM


def cmd_jobs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from popoto.tasks import jobs

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
    from popoto.workers.streams import iter_streams, stream_info

    client = get_client()
    names = [_existing_stream(client, s) for s in args.stream] if args.stream \
        else list(iter_streams(client))
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


def _existing_stream(client: Any, name: str) -> str:
    """The key of stream ``name``; UsageError when neither it nor its dead letters exist."""
    from popoto.workers.streams import dead_letter_key, stream_key

    key = stream_key(name)
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "none" and not client.exists(dead_letter_key(key)):
        raise UsageError(f"stream {key!r} does not exist (popoto-ops streams lists them)")
    if kind not in ("none", "stream"):
        raise UsageError(f"{key!r} is not a stream (it is a {kind})")
    return key


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from popoto.workers.streams import dead_letter_key, replay_dead_letters

    key = _existing_stream(get_client(), args.stream)
    replayed = replay_dead_letters(get_client(), key, args.count)
    out.write(f"replayed {replayed} dead letters from {dead_letter_key(key)} to {key}\n")
    return OK


# --- entry point ------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (exit 2), like every other error."""

    def error(self, message: str) -> Any:
        command = self.prog.removeprefix("popoto-ops").strip()
        where = f"popoto-ops: {command}: " if command else "popoto-ops: "
        self.exit(USAGE, f"{where}{' '.join(message.split())} (see --help)\n")


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,12}", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,15}", text.strip()):
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds > 0: {text!r}")
    return value


DESCRIPTION = """\
Operator commands for Popoto: index health and repair, background jobs, event streams.

Models are found by label (app.models.Order, or the bare class name) once the
modules defining them are imported: --models app.models, or POPOTO_MODEL_MODULES.
Without MODEL arguments every loaded model is processed. The global options
(--redis-url, --models, --json) go before or after the command. Progress (rate,
ETA) is drawn on stderr: a live bar on a terminal, plain lines elsewhere.
"""


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # running from a source tree that is not installed
        return popoto.__version__


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--redis-url, --models, --json: on the main parser with their defaults, and on every
    command with SUPPRESS defaults (so a value given before the command is kept)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--redis-url", default=default(None), metavar="URL",
                        help="data Redis (default: REDIS_CLUSTER_URL, else REDIS_URL)")
    parser.add_argument("--models", dest="model_modules", metavar="MODULES",
                        default=default(os.environ.get("POPOTO_MODEL_MODULES", "")),
                        help="comma-separated modules defining models "
                             "(default: POPOTO_MODEL_MODULES)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output on stdout")


def _batch_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=1000, metavar="N",
                   help="keys per round trip (default 1000)")


def build_parser() -> argparse.ArgumentParser:
    """The parser; every command is registered here, through ``command()``."""
    parser = _Parser(prog="popoto-ops", description=DESCRIPTION, epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"popoto-ops {_version()} ({DISTRIBUTION})",
                        help="print the version and exit")
    _global_options(parser, suppress=False)
    after = _Parser(add_help=False)
    _global_options(after, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")

    def command(name: str, func: Callable[..., int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[after],
                           epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("check-indexes", cmd_check, "read-only index health report (exit 1 on problems)")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model label (app.models.Order or Order); default: every loaded model")
    _batch_size(p)

    p = command("clean-indexes", cmd_clean, "remove index entries nobody owns")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model label (app.models.Order or Order); default: every loaded model")
    _batch_size(p)

    p = command("rebuild-indexes", cmd_rebuild, "repair every index of a model in place")
    p.add_argument("model", metavar="MODEL", help="model label (app.models.Order or Order)")
    _batch_size(p)
    p.add_argument("--async", dest="async_", action="store_true",
                   help="enqueue a Celery job instead and print its id")
    p.add_argument("--wait", action="store_true",
                   help="with --async: follow the job (or the rebuild of MODEL already "
                        "running) until it ends")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                   help="with --wait: give up after this long, exit code 1 "
                        f"(default {DEFAULT_WAIT_TIMEOUT:g})")

    p = command("jobs", cmd_jobs, "progress of background jobs (exit 1 if one failed)")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID",
                   help="one job (exit 1 if unknown); default: the most recent jobs")
    p.add_argument("--limit", type=_positive_int, default=20, metavar="N",
                   help="how many recent jobs (default 20)")

    p = command("streams", cmd_streams, "event streams, consumer groups and dead letters")
    p.add_argument("--stream", action="append", default=[], metavar="NAME",
                   help="only this stream (repeatable; default: every stream)")
    p.add_argument("--max-lag", type=_count, default=None, metavar="N",
                   help="a group further behind than this is a problem")
    p.add_argument("--max-pending-idle-ms", type=_count, default=300_000, metavar="MS",
                   help="a pending entry idle longer than this is a problem (default 300000)")

    p = command("replay-dead-letters", cmd_replay, "put dead letters back on their stream")
    p.add_argument("--stream", required=True, metavar="NAME", help="the stream to replay into")
    p.add_argument("--count", type=_positive_int, default=None, metavar="N",
                   help="at most this many (oldest first; default: all)")

    p = command("dashboard", cmd_dashboard, "serve the operations dashboard over HTTP")
    add_dashboard_options(p)
    return parser


def _import_models(spec: str) -> None:
    """Import the comma-separated model modules of ``--models``."""
    for module in (m.strip() for m in spec.split(",")):
        if not module:
            continue
        if not _MODULE_NAME.match(module):
            raise UsageError(f"--models: {module!r} is not a module name (dotted Python "
                             "names separated by commas, e.g. app.models)")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"--models: cannot import {module!r}: {_one_line(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - any error of a module's own code
            raise UsageError(f"--models: importing {module!r} failed: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from exc


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (see :data:`EXIT_CODES`).

    Errors are one line on ``err``, never a traceback; Ctrl-C is exit code 130.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return OK if exc.code is None else exc.code if isinstance(exc.code, int) else USAGE
        func: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.func
        if args.redis_url:
            popoto.configure(url=args.redis_url)
        _import_models(args.model_modules)
        return func(args, out, err)
    except KeyboardInterrupt:
        err.write(("\n" if err.isatty() else "") + "popoto-ops: interrupted\n")
        return INTERRUPTED
    except (UsageError, PopotoError, redis.RedisError) as exc:
        err.write(f"popoto-ops: {_one_line(exc)}\n")
        return USAGE
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        err.write(f"popoto-ops: {type(exc).__name__}: {_one_line(exc)}\n")
        return USAGE


if __name__ == "__main__":
    sys.exit(main())

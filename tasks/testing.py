"""Helpers for tests and benchmarks that run real workers (no eager mode).

* :func:`spawn_worker` starts ``celery -A popoto.tasks worker`` as its own process
  group (so ``kill -9`` can take the whole worker, pool children included)
  and waits until it reports ready;
* :func:`spawn_beat` and :func:`spawn_consumer` do the same for ``celery beat`` and
  ``python -m popoto.workers consume``;
* :func:`wait_until` polls a condition with a deadline;
* :func:`broker_idle` tells whether the broker has no queued or unacked message;
* :func:`use_test_broker` points an app at a test broker that stores results
  (public Celery API only: call it before the app first publishes).

In-process workers come from Celery's own ``celery.contrib.testing.worker``
(pytest-celery 1.x runs its workers in Docker containers only; see
docs/operations.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .config import EVENTS_QUEUE, MAINTENANCE_QUEUE


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout:.0f}s")
        time.sleep(interval)


def use_test_broker(app: Any, broker_url: str) -> Any:
    """Point ``app`` at a test broker that also stores results (so tests can ``.get()``).

    Public Celery API only: the settings are updated and every registered task stores
    its result. Celery builds an app's result backend once, from the settings of the
    moment, when the app first publishes or reads a result; so call this before that
    (a test session's first use of the app). Calling it again with the same URL is
    harmless; a backend already built for other settings raises RuntimeError instead
    of leaving tests to wait for results that are never stored.
    """
    app.conf.update(broker_url=broker_url, result_backend=broker_url, task_ignore_result=False)
    for task in app.tasks.values():
        task.ignore_result = False
    backend = app.backend
    if getattr(backend, "url", None) != broker_url:
        raise RuntimeError(
            f"the result backend of app {app.main!r} was built before use_test_broker() "
            f"({type(backend).__name__}); call use_test_broker() before the app first "
            "publishes a task")
    return app


def broker_idle(broker: redis.Redis) -> bool:
    """True when no task is queued, reserved or waiting for an ack."""
    pipe = broker.pipeline(transaction=False)
    for queue in (MAINTENANCE_QUEUE, EVENTS_QUEUE):
        pipe.llen(queue)
    pipe.hlen("unacked")
    return not any(pipe.execute())


@dataclass
class Process:
    """A child process started in its own session, with its output in a log file."""

    popen: subprocess.Popen[bytes]
    log_path: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group (a worker and its pool children)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM the main process and wait; SIGKILL the group if it does not exit."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.popen.returncode

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill9()


def spawn(cmd: Sequence[str], env: Mapping[str, str], ready: str | None = None,
          timeout: float = 60.0) -> Process:
    """Start ``cmd`` in its own session; wait until its output contains ``ready``."""
    fd, log_path = tempfile.mkstemp(prefix="popoto-proc-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        popen = subprocess.Popen(list(cmd), env={**os.environ, **env}, stdout=log_file,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    proc = Process(popen, log_path)
    if ready is not None:
        try:
            wait_until(lambda: ready in proc.output() or not proc.alive(), timeout=timeout,
                       message=f"{cmd[0]} ready")
        except TimeoutError:
            proc.kill9()
            raise TimeoutError(
                f"process not ready in {timeout}s:\n{proc.output()[-3000:]}") from None
        if not proc.alive():
            raise RuntimeError(f"process exited during start-up:\n{proc.output()[-3000:]}")
    return proc


def spawn_worker(env: Mapping[str, str], *, concurrency: int = 1, pool: str = "prefork",
                 queues: Sequence[str] = (MAINTENANCE_QUEUE, EVENTS_QUEUE),
                 name: str = "worker", extra: Sequence[str] = (),
                 timeout: float = 60.0) -> Process:
    """``celery -A popoto.tasks worker`` with ``env`` (REDIS_URL, CELERY_BROKER_URL, ...)."""
    cmd = [sys.executable, "-m", "celery", "-A", "popoto.tasks", "worker",
           "--loglevel", "INFO", "--pool", pool, "--concurrency", str(concurrency),
           "--queues", ",".join(queues), "--hostname", f"{name}@%h",
           "--without-gossip", "--without-mingle", "--without-heartbeat", *extra]
    return spawn(cmd, env, ready=" ready.", timeout=timeout)


def spawn_beat(env: Mapping[str, str], schedule_file: str, timeout: float = 60.0) -> Process:
    """``celery -A popoto.tasks beat`` with its schedule state in ``schedule_file``."""
    cmd = [sys.executable, "-m", "celery", "-A", "popoto.tasks", "beat", "--loglevel", "INFO",
           "--schedule", schedule_file]
    return spawn(cmd, env, ready="beat: Starting", timeout=timeout)


def spawn_consumer(env: Mapping[str, str], args: Sequence[str],
                   timeout: float = 30.0) -> Process:
    """``python -m popoto.workers consume ARGS`` with ``env``; waits for "consumer running"."""
    cmd = [sys.executable, "-m", "popoto.workers", "consume", *args]
    return spawn(cmd, env, ready="consumer running", timeout=timeout)

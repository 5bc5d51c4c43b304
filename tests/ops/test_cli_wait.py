"""popoto-ops rebuild-indexes --async --wait with a real worker: its own job, or the one
holding the lease."""

from __future__ import annotations

import io
import threading
import time

import pytest

from popoto.ops.cli import main
from popoto import IndexedField, KeyField, Model
from popoto.registry import label_of
from popoto.tasks import jobs
from popoto.tasks.testing import wait_until
from tests.celery_fixtures import (  # noqa: F401  (fixtures)
    broker,
    broker_url,
    celery_app,
    idle_after,
    worker,
)

pytestmark = [pytest.mark.standalone_only, pytest.mark.usefixtures("worker", "idle_after")]


class WaitPart(Model):
    sku = KeyField()
    bin = IndexedField(type=str)


LABEL = label_of(WaitPart)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_wait_follows_its_job_to_the_end() -> None:
    WaitPart.bulk_create([WaitPart(sku=f"s{i}", bin=f"b{i % 2}") for i in range(30)])
    code, out, err = run("rebuild-indexes", LABEL, "--async", "--wait", "--timeout", "60",
                         "--batch-size", "10")
    job_id = out.splitlines()[0]
    assert code == 0, err
    assert f"{job_id} rebuild {LABEL} done phase=clean" in out


def test_wait_follows_the_rebuild_that_holds_the_lease() -> None:
    """Another rebuild of the model runs: the new task starts no job; --wait says so and
    follows the running one until it ends (it used to poll forever)."""
    WaitPart.create(sku="a", bin="x")
    holder, _ = jobs.Job.start("rebuild", LABEL, 60, ("reindex", "clean"), total=1)
    assert holder is not None

    def finish_holder() -> None:
        try:
            wait_until(lambda: any(s.get("status") == "skipped" for s in jobs.recent()),
                       timeout=15, message="the second rebuild skipped")
        except TimeoutError:
            return
        time.sleep(0.5)
        holder.set(status="done", done=1, finished=time.time())

    thread = threading.Thread(target=finish_holder, daemon=True)
    thread.start()
    code, out, err = run("rebuild-indexes", LABEL, "--async", "--wait", "--timeout", "10")
    thread.join(timeout=20)
    own_id = out.splitlines()[0]
    assert code == 0, err
    assert f"already running as job {holder.id}" in err
    assert f"{holder.id} rebuild {LABEL} done" in out
    own = jobs.get(own_id)
    assert own is not None
    assert own["status"] == "skipped" and own["running_job_id"] == holder.id

"""Maintenance jobs on a real worker: chunked, resumable, idempotent, progress in Redis."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import redis
import structlog
from structlog.testing import capture_logs

import popoto.tasks.bulk_update
import popoto.tasks.check
import popoto.tasks.chunking
import popoto.tasks.clean
import popoto.tasks.maintenance as maintenance
import popoto.tasks.periodic
import popoto.tasks.rebuild
from popoto import IndexedField, IntField, KeyField, Model, SortedField
from popoto.registry import label_of
from popoto.tasks import jobs
from popoto.tasks.testing import wait_until

pytestmark = [pytest.mark.usefixtures("worker", "idle_after"), pytest.mark.standalone_only]


class MaintGadget(Model):
    name = KeyField()
    color = IndexedField(type=str)
    rank = SortedField(type=int)
    size = IntField(default=0)


class MaintToken(Model):
    token = KeyField()
    owner = IndexedField(type=str)

    class Meta:
        ttl = 1


LABEL = label_of(MaintGadget)
MAINTENANCE_MODULES = (popoto.tasks.chunking, popoto.tasks.rebuild, popoto.tasks.clean,
                       popoto.tasks.check, popoto.tasks.bulk_update,
                       popoto.tasks.periodic)


def make_gadgets(n: int) -> list[MaintGadget]:
    return MaintGadget.bulk_create(
        [MaintGadget(name=f"g{i}", color="red" if i % 2 else "blue", rank=i) for i in range(n)]
    )


def wait_job(job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        state = jobs.get(job_id)
        return state if state and state["status"] != "running" else None

    return wait_until(finished, timeout=timeout, message=f"job {job_id} finished")


def capture() -> Any:
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


def test_rebuild_job_restores_lost_index_entries(r: redis.Redis) -> None:
    """A rebuild job re-creates deleted index sets and class-set entries from the hashes."""
    make_gadgets(2500)
    r.delete("$IndexF:MaintGadget:color:red", "$SortedF:MaintGadget:rank")
    r.srem("$Class:MaintGadget", "MaintGadget:g7")
    assert MaintGadget.check_indexes()["total"] > 0
    with capture() as logs:
        result = maintenance.rebuild_indexes.apply_async((LABEL,), {"chunk_size": 500})
        state = wait_job(result.id)
        # the chunk that finished the job logs it just after marking it done
        wait_until(lambda: any(e["event"] == "job finished" for e in logs), timeout=10)
    assert state["status"] == "done"
    assert state["phase"] == "clean"
    assert state["done"] == state["total"] == 2500 + len(MaintGadget.index_keys())
    assert MaintGadget.check_indexes()["total"] == 0
    assert MaintGadget.query.filter(color="red").count() == 1250
    assert MaintGadget.query.filter(rank__gte=2490).count() == 10
    chunk_logs = [e for e in logs if e["event"] == "chunk done" and e.get("phase") == "reindex"]
    assert sum(e["keys"] for e in chunk_logs) == 2500
    assert all(e["model"] == LABEL and e["job_id"] == result.id for e in chunk_logs)
    assert sorted(e["chunk"] for e in chunk_logs) == list(range(len(chunk_logs)))
    finished = [e for e in logs if e["event"] == "job finished"]
    assert len(finished) == 1 and finished[0]["done"] == state["total"]


def test_rebuild_chunk_redelivered_gives_same_state_and_counts_once(r: redis.Redis) -> None:
    """Running the same chunk (same id) again changes neither data nor the job's progress."""
    make_gadgets(300)
    keys = sorted(k.decode() for k in r.smembers("$Class:MaintGadget"))
    r.delete("$IndexF:MaintGadget:color:blue")
    job, _ = jobs.Job.start("rebuild", LABEL, 60, ("reindex", "clean"), total=300)
    assert job is not None
    job.advance("reindex", 0, 1, len(keys))  # as the coordinator would, for one chunk
    first = maintenance.rebuild_chunk.apply_async((LABEL, job.id, 0, keys))
    assert first.get(timeout=20) == 300
    snapshot = {k: r.smembers(k) for k in ("$IndexF:MaintGadget:color:blue",
                                            "$IndexF:MaintGadget:color:red")}
    progress = jobs.get(job.id)
    again = maintenance.rebuild_chunk.apply_async((LABEL, job.id, 0, keys))
    assert again.get(timeout=20) == 300
    assert {k: r.smembers(k) for k in snapshot} == snapshot
    after = jobs.get(job.id)
    assert after is not None and progress is not None
    assert (after["done"], after["chunks_done"]) == (progress["done"], progress["chunks_done"])
    assert after["done"] == 300
    job.fail("test over")


def test_coordinator_continues_in_short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator past its step budget re-enqueues itself and resumes from its cursor."""
    make_gadgets(1200)
    quick = dataclasses.replace(maintenance.settings, job_step_seconds=0.000001)
    for module in MAINTENANCE_MODULES:  # every module of the jobs reads its own ``settings``
        monkeypatch.setattr(module, "settings", quick)
    with capture() as logs:
        result = maintenance.rebuild_indexes.apply_async((LABEL,), {"chunk_size": 100})
        state = wait_job(result.id)
    assert state["status"] == "done"
    continued = [e for e in logs if e["event"] == "coordinator continues later"]
    assert len(continued) >= 3
    reindexed = [e for e in logs if e["event"] == "chunk done" and e.get("phase") == "reindex"]
    assert sum(e["keys"] for e in reindexed) == 1200
    assert len({e["chunk"] for e in reindexed}) == len(reindexed)
    assert MaintGadget.check_indexes()["total"] == 0


def test_two_copies_of_a_coordinator_count_each_chunk_once() -> None:
    """The same coordinator message delivered twice (two settles of one phase's end both
    enqueue it): copy B read the position, then copy A cut every chunk. B's advance must
    write nothing and B stop; counted twice, ``chunks`` would stay above ``chunks_done``
    and the job would never finish (seen once in CI as a 120 s timeout)."""
    job, _ = jobs.Job.start("clean", LABEL, 600, ("clean",))
    assert job is not None
    job.set(**{"clean:begun": 1})  # as _open_job does: the phase's coordinator started
    chunks = [[f"k{i}"] for i in range(4)]
    sent: list[tuple[str, str]] = []

    def send_a(_i: int, _chunk: list[str], task_id: str) -> None:
        sent.append(("A", task_id))

    def send_b(_i: int, _chunk: list[str], task_id: str) -> None:
        sent.append(("B", task_id))
        if len(sent) == 1:  # B sent chunk 0 and has not advanced yet: A runs whole
            popoto.tasks.chunking._enqueue_chunks(None, job, "clean", chunks, send_a, False,
                                                  (), {})

    popoto.tasks.chunking._enqueue_chunks(None, job, "clean", chunks, send_b, False, (), {})
    assert sent == [("B", f"{job.id}-clean-0"), *[("A", f"{job.id}-clean-{i}") for i in range(4)]]
    state = jobs.get(job.id)
    assert state is not None
    assert (state["chunks"], state["enqueued"], state["scan_done"]) == (4, 4, 1)
    results = [job.complete_chunk(f"clean:{i}", 1) for i in range(4)]
    assert [r.finished for r in results] == [False, False, False, True]
    final = jobs.get(job.id)
    assert final is not None and final["status"] == "done"


def test_clean_job_removes_orphans_and_counts_them(r: redis.Redis) -> None:
    """Hashes deleted behind the ORM's back leave orphans that a clean job removes."""
    make_gadgets(400)
    r.delete(*[f"MaintGadget:g{i}" for i in range(0, 400, 4)])  # 100 instances gone
    before = MaintGadget.check_indexes()
    assert before["orphans"] > 0
    result = maintenance.clean_indexes.apply_async((LABEL,))
    state = wait_job(result.id)
    assert state["status"] == "done"
    assert state["removed"] == before["total"]
    assert MaintGadget.check_indexes()["total"] == 0
    assert r.scard("$Class:MaintGadget") == 300
    assert MaintGadget.query.filter(color="blue").count() == 100


def test_check_task_reports_problems_in_the_job_hash(r: redis.Redis) -> None:
    """check_indexes stores the report total as ``problems`` and returns the report."""
    make_gadgets(50)
    r.delete("MaintGadget:g1", "MaintGadget:g2")
    result = maintenance.check_indexes.apply_async((LABEL,))
    report = result.get(timeout=20)
    state = wait_job(result.id)
    assert report["total"] > 0
    assert state["problems"] == report["total"] and state["status"] == "done"
    assert r.exists("$Lock:check:" + LABEL.replace(":", "%3A")) == 0


def test_bulk_update_job_updates_matching_instances_and_indexes() -> None:
    """bulk_update(label, filter, updates) sets the values on every match, chunk by chunk."""
    make_gadgets(250)
    result = maintenance.bulk_update.apply_async(
        (LABEL, {"color": "red"}, {"color": "green", "size": 7}), {"chunk_size": 40})
    state = wait_job(result.id)
    assert state["status"] == "done" and state["done"] == 125 and state["chunks"] == 4
    assert MaintGadget.query.filter(color="green").count() == 125
    assert MaintGadget.query.filter(color="red").count() == 0
    assert {g.size for g in MaintGadget.query.filter(color="green")} == {7}
    assert MaintGadget.check_indexes()["total"] == 0


def test_overlapping_ticks_of_the_same_job_run_once() -> None:
    """Two clean ticks for one model: one job runs, the other sees the lease and skips."""
    make_gadgets(200)
    with capture() as logs:
        first = maintenance.clean_indexes.apply_async((LABEL,))
        second = maintenance.clean_indexes.apply_async((LABEL,))
        ids = {first.get(timeout=20), second.get(timeout=20)}
    ran = [i for i in ids if i is not None]
    assert len(ran) == 1 and None in ids
    wait_job(ran[0])
    skipped = [e for e in logs if e["event"] == "job already running"]
    assert len(skipped) == 1 and skipped[0]["running_job_id"] == ran[0]
    started = [e for e in logs if e["event"] == "job started" and e["kind"] == "clean"]
    assert len(started) == 1
    assert [j["id"] for j in jobs.recent(10) if j["kind"] == "clean"] == ran


def test_lease_released_when_job_ends_so_next_tick_runs() -> None:
    """After a job finished, the next tick of the same job starts a new one."""
    make_gadgets(20)
    one = maintenance.clean_indexes.apply_async((LABEL,)).get(timeout=20)
    wait_job(one)
    two = maintenance.clean_indexes.apply_async((LABEL,)).get(timeout=20)
    assert two is not None and two != one
    wait_job(two)


def test_expired_instances_leave_nothing_after_ttl_cleanup(r: redis.Redis) -> None:
    """After TTL expiry, delete_expired_index_entries cleans the model's stale entries."""
    for i in range(30):
        MaintToken(token=f"t{i}", owner="ann").save()
    MaintGadget(name="keep", color="red", rank=1).save()
    wait_until(lambda: not any(r.exists(f"MaintToken:t{i}") for i in range(30)), timeout=10)
    assert r.scard("$IndexF:MaintToken:owner:ann") == 30
    scheduled = maintenance.delete_expired_index_entries.apply_async().get(timeout=20)
    assert label_of(MaintToken) in scheduled
    assert LABEL not in scheduled  # nothing of it expired: not cleaned needlessly
    wait_until(lambda: r.exists("$IndexF:MaintToken:owner:ann") == 0
               and r.scard("$Class:MaintToken") == 0, timeout=20, message="ttl clean-up")
    assert MaintToken.check_indexes()["total"] == 0


def test_fan_out_enqueues_a_check_per_registered_model(r: redis.Redis) -> None:
    """check_all_indexes enqueues check_indexes for every registered model."""
    make_gadgets(5)
    labels = maintenance.check_all_indexes.apply_async().get(timeout=20)
    assert LABEL in labels and label_of(MaintToken) in labels

    def all_checked() -> bool:
        done = {(j["model"], j["status"]) for j in jobs.recent(500) if j["kind"] == "check"}
        return all((label, "done") in done for label in labels)

    wait_until(all_checked, timeout=60, message="every model checked")


def test_unknown_label_fails_without_retry() -> None:
    """A label no worker knows fails at once (ModelException), it is not retried."""
    result = maintenance.check_indexes.apply_async(("NoSuchModelAnywhere",))
    with pytest.raises(Exception, match="no registered model"):
        result.get(timeout=20)
    assert result.state == "FAILURE"


def test_progress_is_queryable_while_running(r: redis.Redis) -> None:
    """jobs.get() shows done/total moving while chunks run."""
    make_gadgets(3000)
    result = maintenance.rebuild_indexes.apply_async((LABEL,), {"chunk_size": 250})
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = jobs.get(result.id)
        if state:
            seen.add(state["done"])
            if state["status"] == "done":
                break
        time.sleep(0.01)
    assert state is not None and state["status"] == "done"
    assert len(seen) > 2  # intermediate progress was observable


def test_stalled_reindex_with_a_lost_chunk_message_is_resumed(r: redis.Redis) -> None:
    """A chunk counted but never delivered (lost by the broker): the stall repair finishes it."""
    make_gadgets(150)
    r.delete("$SortedF:MaintGadget:rank")
    job, _ = jobs.Job.start("rebuild", LABEL, 600, ("reindex", "clean"), total=150)
    assert job is not None
    job.advance("reindex", 0, 1, 150)  # the coordinator cut chunk 0 ...
    job.finish_scan("reindex")  # ... and ended its scan, but chunk 0's message is gone
    stale = time.time() - maintenance.settings.stall_seconds - 5
    r.hset(job.key, "updated", stale)
    with capture() as logs:
        repaired = maintenance.resume_stalled_jobs.apply_async().get(timeout=20)
        state = wait_job(job.id)
    assert repaired == [job.id]
    assert state["status"] == "done" and state["done"] == state["total"]
    assert state["epoch"] == 1  # the reindex scan started over in a new epoch
    assert MaintGadget.check_indexes()["total"] == 0
    assert any(e["event"] == "job stalled: repairing" for e in logs)


def test_stalled_clean_requeues_exactly_the_missing_chunks(r: redis.Redis) -> None:
    """In the clean phase only the chunk ids never completed are enqueued again."""
    make_gadgets(30)
    r.delete("MaintGadget:g1")
    first = maintenance.clean_indexes.apply_async((LABEL,)).get(timeout=20)
    wait_job(first)
    assert MaintGadget.check_indexes()["total"] == 0
    r.delete("MaintGadget:g2")  # a new orphan for the stalled job to remove
    job, _ = jobs.Job.start("clean", LABEL, 600, ("clean",))
    assert job is not None
    keys = MaintGadget.index_keys()
    r.rpush(jobs.job_list_key(job.id), *keys)
    r.hset(job.key, "clean:listed", 1)
    job.advance("clean", 1, 1, len(keys))  # one group cut, its message lost
    job.finish_scan("clean")
    r.hset(job.key, "updated", time.time() - maintenance.settings.stall_seconds - 5)
    with capture() as logs:
        assert maintenance.resume_stalled_jobs.apply_async().get(timeout=20) == [job.id]
        state = wait_job(job.id)
    assert state["status"] == "done" and state["removed"] > 0
    requeued = [e for e in logs if e["event"] == "re-enqueued chunks whose messages were lost"]
    assert [e["chunks"] for e in requeued] == [[0]]
    assert MaintGadget.check_indexes()["total"] == 0


def test_running_job_with_recent_progress_is_left_alone() -> None:
    """resume_stalled_jobs touches nothing that progressed within the stall window."""
    job, _ = jobs.Job.start("clean", LABEL, 600, ("clean",))
    assert job is not None
    try:
        assert maintenance.resume_stalled_jobs.apply_async().get(timeout=20) == []
        assert (jobs.get(job.id) or {}).get("repairs") is None
    finally:
        job.fail("test over")


def test_late_coordinator_never_ends_the_scan_of_the_next_phase(r: redis.Redis) -> None:
    """A reindex coordinator settling late (phase already clean) leaves the clean phase open."""
    job, _ = jobs.Job.start("rebuild", LABEL, 600, ("reindex", "clean"), total=10)
    assert job is not None
    try:
        job.advance("reindex", 0, 1, 10)
        job.set(**{"reindex:scanned": 1, "chunks_done": 1, "phase": "clean", "scan_done": 0})
        result = maintenance._finish_scan(job, "reindex")
        state = jobs.get(job.id)
        assert state is not None and not result.finished
        assert (state["status"], state["phase"], state["scan_done"]) == ("running", "clean", 0)
    finally:
        job.fail("test over")

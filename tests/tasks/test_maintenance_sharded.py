"""Maintenance jobs of a sharded model on a real worker: one chunk chain per tag group."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
import structlog
from structlog.testing import capture_logs

import popoto.tasks.maintenance as maintenance
from popoto import Field, IndexedField, KeyField, Model, SortedField, keys
from popoto import encoding
from popoto.registry import label_of
from popoto.tasks import jobs
from popoto.tasks.testing import wait_until

pytestmark = [pytest.mark.usefixtures("worker", "idle_after"), pytest.mark.standalone_only]

GROUPS = 4


class MaintShard(Model):
    name = KeyField()
    color = IndexedField(type=str)
    rank = SortedField(type=int)
    email = Field(null=True, unique=True)

    class Meta:
        shards = GROUPS


LABEL = label_of(MaintShard)
META = MaintShard._meta


def make(n: int) -> None:
    for i in range(n):
        MaintShard.create(name=f"g{i:04d}", color="red" if i % 2 else "blue", rank=i,
                          email=f"e{i}")


def key(i: int) -> str:
    return META.instance_key((f"g{i:04d}",))


def ns(redis_key: str) -> str:
    return keys.ns_of(redis_key)


def damage(r: Any, n: int) -> None:
    """Damage in every group: lost sets, orphans, wrong scores, stale claims."""
    for group in META.groups:
        r.delete(keys.field_index_key("IndexF", group, "color", "red"))
    for i in range(0, n, 10):
        r.delete(key(i))
    for i in range(3, n, 10):
        r.zadd(keys.field_index_key("SortedF", ns(key(i)), "rank"), {key(i): -5})
    for i in range(5, n, 50):
        r.srem(keys.class_set_key(ns(key(i))), key(i))
    stale = encoding.pack("stale@x").hex()
    r.hset(keys.field_index_key("UniqueF", META.claim_ns(stale), "email"), stale, key(7))


def wait_job(job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        state = jobs.get(job_id)
        return state if state and state["status"] != "running" else None

    return wait_until(finished, timeout=timeout, message=f"job {job_id} finished")


def capture() -> Any:
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


def done_ids(r: Any, job_id: str) -> set[str]:
    return {m.decode() for m in r.smembers(jobs.job_done_key(job_id))}


def test_rebuild_job_runs_one_chunk_chain_per_group(r: redis.Redis) -> None:
    """rebuild: one scan per group, every chunk inside one group, counted once; repaired."""
    make(600)
    damage(r, 600)
    before = MaintShard.check_indexes()
    assert before["total"] > 0
    with capture() as logs:
        result = maintenance.rebuild_indexes.apply_async((LABEL,), {"chunk_size": 40})
        state = wait_job(result.id)
        wait_until(lambda: any(e["event"] == "job finished" for e in logs), timeout=10)
    assert result.get(timeout=10) == result.id
    assert state["status"] == "done" and state["phase"] == "clean"
    assert state["done"] == state["total"] == 540 + len(MaintShard.index_keys())
    assert int(state["groups"]) == GROUPS
    raw = {k.decode(): v.decode() for k, v in r.hgetall(jobs.job_key(result.id)).items()}
    assert all(raw[f"reindex:g{i}:scanned"] == "1" for i in range(GROUPS))
    chunks = [e for e in logs if e["event"] == "chunk done" and e.get("phase") == "reindex"]
    assert {e["group"] for e in chunks} == set(range(GROUPS))
    assert sum(e["keys"] for e in chunks) == 540
    ids = {c for c in done_ids(r, result.id) if c.startswith("reindex:")}
    assert ids == {f"reindex:0:g{e['group']}:{e['chunk']}" for e in chunks}
    for i in range(GROUPS):  # a group's chunks are numbered 0..k-1 by its own scan
        steps = sorted(e["chunk"] for e in chunks if e["group"] == i)
        assert steps == list(range(len(steps))) and int(raw[f"reindex:g{i}:step"]) == len(steps)
    scans = [e for e in logs if e["event"] == "group scan finished"]
    assert sorted(e["group"] for e in scans) == list(range(GROUPS))
    assert MaintShard.check_indexes()["total"] == 0
    assert MaintShard.query.filter(color="red").count() == 300
    assert [o.name for o in MaintShard.query.filter(rank__lt=3)] == ["g0001", "g0002"]


def test_check_job_fans_out_per_group_and_sums_the_direct_report(r: redis.Redis) -> None:
    """check: one chunk per group; the job's report equals check_indexes() called directly."""
    make(200)
    damage(r, 200)
    direct = MaintShard.check_indexes()
    result = maintenance.check_indexes.apply_async((LABEL,))
    assert result.get(timeout=20) == result.id
    state = wait_job(result.id)
    assert state["status"] == "done" and state["done"] == state["total"] == GROUPS
    assert json.loads(state["report"]) == direct
    assert state["problems"] == direct["total"] > 0
    assert done_ids(r, result.id) == {f"check:{i}" for i in range(GROUPS)}
    parts = [json.loads(r.hget(jobs.job_key(result.id), f"report:g{i}")) for i in range(GROUPS)]
    assert [p["instances"] for p in parts] == [
        MaintShard.check_indexes(group=g)["instances"] for g in META.groups]
    assert sum(p["total"] > 0 for p in parts) == GROUPS


def test_clean_job_cuts_chunks_inside_one_group(r: redis.Redis) -> None:
    """clean: every chunk holds index keys of one group only; orphans of all groups go."""
    make(300)
    for i in range(0, 300, 3):
        r.delete(key(i))
    before = MaintShard.check_indexes()
    result = maintenance.clean_indexes.apply_async((LABEL,))
    state = wait_job(result.id)
    assert state["status"] == "done" and state["removed"] == before["total"]
    listed = [k.decode() for k in r.lrange(jobs.job_list_key(result.id), 0, -1)]
    chunks = maintenance._clean_chunks(MaintShard, listed)
    assert state["chunks"] == len(chunks) >= GROUPS
    assert all(len({MaintShard._index_group(k) for k in chunk}) == 1 for chunk in chunks)
    assert MaintShard.check_indexes()["total"] == 0
    assert MaintShard.query.count() == 200


def test_redelivered_fan_out_counts_every_chunk_once(r: redis.Redis) -> None:
    """The group scans sent twice (a redelivered coordinator): same state, progress exact."""
    make(400)
    damage(r, 400)
    job, _ = jobs.Job.start("rebuild", LABEL, 600, ("reindex", "clean"), total=360)
    assert job is not None
    job.set(**{"reindex:begun": 1})  # as the coordinator that started the job does
    maintenance._fan_out_groups(job, LABEL, GROUPS, 30)
    maintenance._fan_out_groups(job, LABEL, GROUPS, 30)
    state = wait_job(job.id)
    assert state["status"] == "done"
    assert state["done"] == state["total"] == 360 + len(MaintShard.index_keys())
    assert state["chunks_done"] == state["chunks"]
    assert MaintShard.check_indexes()["total"] == 0


def test_server_change_mid_scan_restarts_every_group_in_a_new_epoch(r: redis.Redis) -> None:
    """A group scan whose server changed (restart/failover) restarts the reindex of all groups."""
    make(200)
    damage(r, 200)
    job, _ = jobs.Job.start("rebuild", LABEL, 600, ("reindex", "clean"), total=180)
    assert job is not None
    r.hset(job.key, mapping={"reindex:reset": 0, "reindex:g2:server": "a-server-long-gone"})
    with capture() as logs:
        maintenance.rebuild_indexes.apply_async((LABEL,), {"job_id": job.id, "chunk_size": 25})
        state = wait_job(job.id)
    assert state["status"] == "done" and state["epoch"] == 1
    assert state["done"] == state["total"] == 180 + len(MaintShard.index_keys())
    assert len([e for e in logs if "failed over during a scan" in e["event"]]) == 1
    assert MaintShard.check_indexes()["total"] == 0


def test_stalled_sharded_check_requeues_lost_group_chunks(r: redis.Redis) -> None:
    """A check whose group chunk message was lost: the stall repair sends that group again."""
    make(50)
    job, _ = jobs.Job.start("check", LABEL, 600, ("check",), total=GROUPS)
    assert job is not None
    for i in range(GROUPS):
        job.advance("check", i + 1, i + 1, 1)  # every group chunk cut ...
    job.finish_scan("check")  # ... their messages lost
    r.hset(job.key, "updated", 1.0)
    assert maintenance.resume_stalled_jobs.apply_async().get(timeout=20) == [job.id]
    state = wait_job(job.id)
    assert state["status"] == "done" and state["problems"] == 0
    assert done_ids(r, job.id) == {f"check:{i}" for i in range(GROUPS)}


def test_ttl_cleanup_samples_every_group(r: redis.Redis) -> None:
    """delete_expired_index_entries finds expired members in the class sets of a sharded model."""
    make(40)
    for i in range(40):
        r.pexpire(key(i), 1)
    wait_until(lambda: not any(r.exists(key(i)) for i in range(40)), timeout=10)
    scheduled = maintenance.delete_expired_index_entries.apply_async().get(timeout=20)
    assert LABEL in scheduled
    wait_until(lambda: MaintShard.check_indexes()["total"] == 0, timeout=30,
               message="expired entries cleaned")
    assert sum(r.scard(c) for c in META.class_set_keys()) == 0


@pytest.mark.usefixtures("cluster_mode")
def test_rebuild_and_check_jobs_on_a_real_cluster() -> None:
    """On a 3-master cluster (data) with a standalone broker: per-group jobs repair and report."""
    from popoto.redis_db import get_client

    make(300)
    client = get_client()
    damage(client, 300)
    direct = MaintShard.check_indexes()
    assert direct["total"] > 0
    check = maintenance.check_indexes.apply_async((LABEL,))
    assert check.get(timeout=30) == check.id
    state = wait_job(check.id)
    assert json.loads(state["report"]) == direct
    rebuild = maintenance.rebuild_indexes.apply_async((LABEL,), {"chunk_size": 25})
    state = wait_job(rebuild.id, timeout=90)
    assert state["status"] == "done"
    assert state["done"] == state["total"] == 270 + len(MaintShard.index_keys())
    assert client.exists(jobs.job_key(rebuild.id))
    assert "{popoto-jobs}" in jobs.job_key(rebuild.id)
    assert MaintShard.check_indexes()["total"] == 0
    assert MaintShard.query.filter(color="red").count() == 150


# --- the broker stays a standalone Redis -------------------------------------------


def test_broker_url_order_and_never_a_cluster() -> None:
    """CELERY_BROKER_URL, else REDIS_URL's next db, else Popoto's server; cluster URLs refused."""
    from popoto.exceptions import ConnectionConfigError
    from popoto.redis_db import current_url
    from popoto.tasks.app import broker_url
    from popoto.tasks.config import Settings, default_broker_url

    conf = Settings()
    assert broker_url(conf, {"CELERY_BROKER_URL": "redis://b:1/3"}) == "redis://b:1/3"
    assert broker_url(conf, {"REDIS_URL": "redis://data:6379/2",
                             "REDIS_CLUSTER_URL": "redis://c:7000"}) == "redis://data:6379/3"
    assert broker_url(conf, {}) == default_broker_url(current_url())
    flagged = {"REDIS_URL": "redis://c:7000/0?cluster=true"}
    assert broker_url(conf, flagged) == default_broker_url(current_url())
    coded = Settings(broker_url="redis://own:1/9")
    assert broker_url(coded, {}) == "redis://own:1/9"
    for bad in ({"CELERY_BROKER_URL": "redis://c:7000/0?cluster=1"},
                {"CELERY_BROKER_URL": "redis://c:7000/1", "REDIS_CLUSTER_URL": "redis://c:7000"}):
        with pytest.raises(ConnectionConfigError, match="standalone"):
            broker_url(conf, bad)


@pytest.mark.usefixtures("cluster_mode")
def test_broker_in_cluster_mode_needs_a_standalone_redis(cluster: Any) -> None:
    """Popoto on a cluster: the broker is REDIS_URL's server if standalone, else an error;
    a worker's client set-up keeps cluster mode."""
    from celery import Celery

    from popoto.exceptions import ConnectionConfigError
    from popoto.redis_db import get_client, is_cluster
    from popoto.tasks.app import _configure_worker_client, broker_url, configure_app, create_app
    from popoto.tasks.config import Settings

    conf = Settings()
    with pytest.raises(ConnectionConfigError, match="CELERY_BROKER_URL"):
        broker_url(conf, {})
    with pytest.raises(ConnectionConfigError, match="CELERY_BROKER_URL"):
        broker_url(conf, {"REDIS_URL": cluster.url})
    assert broker_url(conf, {"REDIS_URL": "redis://queue:6379/0"}) \
        == "redis://queue:6379/1"
    own = create_app(Settings(broker_url="redis://queue:6379/4"))  # Popoto's own app
    assert own.conf.broker_url == "redis://queue:6379/4"
    host = Celery("host", broker="redis://hosts:6379/2", set_as_current=False)
    assert configure_app(host, conf).conf.broker_url == "redis://hosts:6379/2"  # kept
    _configure_worker_client()
    assert is_cluster() and get_client().ping()

"""Settings from the environment, the declared task policy, routing and the beat schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis

import popoto.tasks.maintenance as maintenance
import popoto.workers.tasks as worker_tasks
from popoto.exceptions import ConnectionConfigError
from popoto.tasks import app
from popoto.tasks.base import RETRYABLE, PopotoTask
from popoto.tasks.config import Settings, default_broker_url
from popoto.tasks.schedule import build_schedule


def test_broker_defaults_to_the_data_server_on_another_db() -> None:
    """CELERY_BROKER_URL unset: same server as REDIS_URL, next database number."""
    s = Settings.from_env({"REDIS_URL": "redis://:pw@cache.example:6380/3"})
    assert s.broker_url == "redis://:pw@cache.example:6380/4"
    assert default_broker_url("redis://h/15") == "redis://h/14"
    assert default_broker_url("unix:///tmp/r.sock?db=2") == "unix:///tmp/r.sock?db=3"
    assert "pw" not in s.describe()["broker_url"]


def test_explicit_env_values_are_used() -> None:
    """Every documented variable is read (broker, backend, serializer, limits, intervals)."""
    s = Settings.from_env({
        "REDIS_URL": "redis://a/0", "CELERY_BROKER_URL": "redis://b/5",
        "CELERY_RESULT_BACKEND": "redis://b/6", "CELERY_SERIALIZER": "msgpack",
        "CELERY_VISIBILITY_TIMEOUT": "1000", "POPOTO_TASK_SOFT_TIME_LIMIT": "100",
        "POPOTO_TASK_TIME_LIMIT": "120", "POPOTO_DRAIN_STREAMS": "mutations:proj, audit:log",
        "POPOTO_MODEL_MODULES": "app.models, app.more", "POPOTO_JOB_STEP_SECONDS": "2.5",
    })
    conf = s.celery_config()
    assert conf["broker_url"] == "redis://b/5" and conf["result_backend"] == "redis://b/6"
    assert conf["task_serializer"] == "msgpack" and conf["accept_content"] == ["msgpack"]
    assert conf["broker_transport_options"]["visibility_timeout"] == 1000
    assert s.drain_streams == (("mutations", "proj"), ("audit", "log"))
    assert conf["imports"] == ("app.models", "app.more")
    assert s.job_step_seconds == 2.5


@pytest.mark.parametrize("env, needle", [
    ({"POPOTO_TASK_TIME_LIMIT": "4000"}, "CELERY_VISIBILITY_TIMEOUT"),
    ({"POPOTO_TASK_SOFT_TIME_LIMIT": "400"}, "POPOTO_TASK_SOFT_TIME_LIMIT"),
    ({"POPOTO_TASK_RETRY_BACKOFF_MAX": "3600"}, "POPOTO_TASK_RETRY_BACKOFF_MAX"),
    ({"CELERY_SERIALIZER": "pickle"}, "CELERY_SERIALIZER"),
    ({"POPOTO_CHUNK_SIZE": "many"}, "POPOTO_CHUNK_SIZE"),
    ({"POPOTO_DRAIN_STREAMS": "nogroup"}, "POPOTO_DRAIN_STREAMS"),
    ({"POPOTO_LOG_FORMAT": "xml"}, "POPOTO_LOG_FORMAT"),
    ({"POPOTO_JOB_STALL_SECONDS": "100"}, "POPOTO_JOB_STALL_SECONDS"),
    ({"POPOTO_LOCK_TTL": "100"}, "POPOTO_LOCK_TTL"),
])
def test_inconsistent_settings_fail_naming_the_variable(env: dict[str, str], needle: str) -> None:
    """Limits at or above the visibility timeout, bad names or numbers fail at start-up."""
    with pytest.raises(ConnectionConfigError, match=needle):
        Settings.from_env(env)


def test_default_policy_keeps_limits_below_visibility_timeout() -> None:
    """Defaults: soft < hard time limit < visibility timeout; back-off cap below it too."""
    s = Settings()
    assert 0 < s.soft_time_limit < s.time_limit < s.visibility_timeout
    assert s.retry_backoff_max < s.visibility_timeout
    conf = s.celery_config()
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True


def test_every_task_declares_the_retry_and_ack_policy() -> None:
    """Each Popoto task retries on Redis outages with jittered capped back-off, acks late."""
    assert set(RETRYABLE) == {redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                              redis.exceptions.BusyLoadingError}
    names = [n for n in app.tasks if n.startswith("popoto.")]
    assert len(names) >= 10
    for name in names:
        task = app.tasks[name]
        assert isinstance(task, PopotoTask), name
        assert tuple(task.autoretry_for) == RETRYABLE
        assert task.retry_backoff and task.retry_jitter and task.retry_backoff_max
        assert task.max_retries and task.acks_late and task.reject_on_worker_lost
        assert 0 < task.soft_time_limit < task.time_limit


def test_tasks_are_routed_to_their_queues() -> None:
    """Maintenance tasks go to the ``maintenance`` queue, stream drains to ``events``."""
    router = app.amqp.router
    assert router.route({}, maintenance.rebuild_indexes.name)["queue"].name == "maintenance"
    assert router.route({}, maintenance.clean_index_keys.name)["queue"].name == "maintenance"
    assert router.route({}, worker_tasks.drain_stream.name)["queue"].name == "events"


def test_beat_schedule_from_intervals() -> None:
    """Beat runs check/clean/TTL clean-up and drains at the configured intervals; 0 = off."""
    s = Settings.from_env({"POPOTO_CHECK_INTERVAL": "60", "POPOTO_CLEAN_INTERVAL": "0",
                           "POPOTO_TTL_CLEANUP_INTERVAL": "30",
                           "POPOTO_DRAIN_STREAMS": "mutations:proj",
                           "POPOTO_DRAIN_INTERVAL": "5", "POPOTO_DRAIN_MAX_ENTRIES": "50",
                           "POPOTO_STALL_CHECK_INTERVAL": "20"})
    schedule = build_schedule(s)
    assert set(schedule) == {"popoto-check-indexes", "popoto-expired-index-entries",
                             "popoto-drain-mutations-proj", "popoto-resume-stalled-jobs"}
    assert schedule["popoto-resume-stalled-jobs"]["schedule"] == timedelta(seconds=20)
    check = schedule["popoto-check-indexes"]
    assert check["task"] == "popoto.maintenance.check_all_indexes"
    assert check["schedule"] == timedelta(seconds=60)
    assert check["options"]["expires"] == 60  # a backlog of ticks is not replayed
    drain = schedule["popoto-drain-mutations-proj"]
    assert drain["args"] == ("mutations", "proj")
    assert drain["kwargs"]["max_entries"] == 50
    for entry in schedule.values():
        assert entry["task"] in app.tasks


def test_each_task_is_published_to_exactly_one_queue(celery_app: Any,
                                                     broker: redis.Redis) -> None:
    """A maintenance task lands only in ``maintenance``, a drain only in ``events``."""
    broker.flushdb()
    celery_app.send_task("popoto.maintenance.check_indexes", ("Nothing",))
    celery_app.send_task("popoto.events.drain_stream", ("s", "g"))
    celery_app.send_task("popoto.events.drain_stream", ("s", "g"))
    assert (broker.llen("maintenance"), broker.llen("events")) == (1, 2)
    broker.flushdb()

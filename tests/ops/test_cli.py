"""popoto-ops: index commands, jobs, streams and dead letters; exit codes tell problems."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
import redis

from popoto.ops.cli import main
from popoto.ops.progress import Progress
from popoto import IndexedField, KeyField, Model, SortedField
from popoto.registry import label_of
from popoto.tasks import jobs


class CliPart(Model):
    sku = KeyField()
    bin = IndexedField(type=str)
    weight = SortedField(type=float)


pytestmark = pytest.mark.standalone_only  # unsharded key names, broker on the data server

LABEL = label_of(CliPart)
STREAM = "stream:mutations"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def parts(n: int) -> None:
    CliPart.bulk_create([CliPart(sku=f"s{i}", bin=f"b{i % 3}", weight=float(i))
                         for i in range(n)])


def test_check_indexes_exit_code_follows_problems(r: redis.Redis) -> None:
    """Healthy model: exit 0 and "ok"; an instance deleted behind the ORM: exit 1."""
    parts(20)
    code, out, _ = run("check-indexes", LABEL)
    assert code == 0 and f"{LABEL}: ok total=0" in out
    r.delete("CliPart:s3")
    code, out, _ = run("check-indexes", "CliPart")
    assert code == 1 and "PROBLEMS" in out and "orphans=" in out


def test_check_indexes_json_output(r: redis.Redis) -> None:
    """--json prints the report per model label."""
    parts(5)
    code, out, _ = run("--json", "check-indexes", LABEL)
    assert code == 0 and json.loads(out)[LABEL]["total"] == 0


def test_clean_indexes_removes_orphans(r: redis.Redis) -> None:
    """clean-indexes reports what it removed and leaves a healthy model."""
    parts(10)
    r.delete("CliPart:s1", "CliPart:s2")
    code, out, _ = run("clean-indexes", LABEL)
    assert code == 0 and f"{LABEL}: removed " in out
    assert int(out.split("removed ")[1].split()[0]) > 0
    assert run("check-indexes", LABEL)[0] == 0


def test_rebuild_indexes_sync_shows_progress_and_repairs(r: redis.Redis) -> None:
    """rebuild-indexes repairs lost indexes in place, drawing progress on stderr."""
    parts(250)
    r.delete("$SortedF:CliPart:weight", "$IndexF:CliPart:bin:b1")
    assert run("check-indexes", LABEL)[0] == 1
    code, out, err = run("rebuild-indexes", LABEL, "--batch-size", "50")
    assert code == 0 and "rebuilt the indexes of 250 instances" in out
    assert "CliPart reindex: 100%|" in err and "| 250/250 [" in err
    assert "CliPart clean: 100%|" in err and "removed=" in err
    assert "obj/s, elapsed " in err and ", ETA 00:00" in err
    assert run("check-indexes", LABEL)[0] == 0
    assert CliPart.query.filter(bin="b1").count() == 83



def test_rebuild_indexes_async_enqueues_a_job(broker: redis.Redis) -> None:
    """--async publishes the rebuild task on the maintenance queue and prints the job id."""
    parts(3)
    code, out, err = run("rebuild-indexes", LABEL, "--async")
    job_id = out.strip()
    assert code == 0 and len(job_id) >= 32 and f"popoto-ops jobs {job_id}" in err
    (raw,) = broker.lrange("maintenance", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "popoto.maintenance.rebuild_indexes"
    assert message["headers"]["id"] == job_id
    assert message["headers"]["argsrepr"] == repr((LABEL,))


def test_rebuild_async_wait_gives_up_without_a_worker(broker: redis.Redis) -> None:
    """--wait with --timeout and no worker: exit 1 and say why."""
    code, _, err = run("rebuild-indexes", LABEL, "--async", "--wait", "--timeout", "0.3")
    assert code == 1 and "no worker consuming the maintenance queue" in err


def test_jobs_lists_progress_and_flags_failures() -> None:
    """jobs shows done/total per job; a failed job makes the exit code 1."""
    job, _ = jobs.Job.start("clean", LABEL, 60, ("clean",), total=7)
    assert job is not None
    code, out, _ = run("jobs")
    assert code == 0 and f"{job.id} clean {LABEL} running phase=clean done=0/7" in out
    job.fail("worker exploded")
    code, out, _ = run("jobs", job.id)
    assert code == 1 and "failed" in out and "worker exploded" in out
    assert run("jobs", "no-such-job")[0] == 1


def add_events(r: redis.Redis, n: int) -> list[str]:
    return [r.xadd(STREAM, {"model": "Order", "pk": f"Order:{i}", "op": "create",
                            "ts": f"{time.time():.6f}", "changed_fields": "[]"}).decode()
            for i in range(n)]


def test_streams_reports_groups_and_is_clean_when_caught_up(r: redis.Redis) -> None:
    """A caught-up group: exit 0 with length, pending and lag shown."""
    ids = add_events(r, 4)
    r.xgroup_create(STREAM, "projections", id="0")
    r.xreadgroup("projections", "c1", {STREAM: ">"}, count=4)
    r.xack(STREAM, "projections", *ids)
    code, out, _ = run("streams")
    assert code == 0
    assert f"{STREAM}: length=4 dead_letters=0 groups=1" in out
    assert "group projections: consumers=1 pending=0 lag=0" in out


def test_streams_flags_dead_letters_stuck_pending_and_lag(r: redis.Redis) -> None:
    """Dead letters, a pending entry idle too long, or lag over --max-lag: exit 1."""
    add_events(r, 5)
    r.xgroup_create(STREAM, "projections", id="0")
    r.xreadgroup("projections", "gone", {STREAM: ">"}, count=1)
    time.sleep(0.02)
    code, out, _ = run("streams", "--max-pending-idle-ms", "10", "--max-lag", "2")
    assert code == 1
    assert "PROBLEM: stream:mutations group projections: a pending entry idle" in out
    assert "lag 4 > 2" in out
    r.xadd("dead:" + STREAM, {"model": "Order", "pk": "Order:x", "op": "create",
                              "dl_id": "1-1", "dl_stream": STREAM})
    code, out, _ = run("--json", "streams", "--stream", "mutations")
    payload = json.loads(out)
    assert code == 1 and payload["streams"][0]["dead_letters"] == 1
    assert any("dead letters" in p for p in payload["problems"])


def test_replay_dead_letters_moves_them_back(r: redis.Redis) -> None:
    """replay-dead-letters re-adds the original fields (plus origin_id) to the stream."""
    r.xadd("dead:" + STREAM, {"model": "Order", "pk": "Order:7", "op": "update",
                              "ts": "1.0", "changed_fields": "[]", "dl_id": "5-0",
                              "dl_stream": STREAM, "dl_error": "boom", "dl_deliveries": "5"})
    code, out, _ = run("replay-dead-letters", "--stream", "mutations")
    assert code == 0 and "replayed 1 dead letters" in out
    assert r.xlen("dead:" + STREAM) == 0
    ((_id, fields),) = r.xrange(STREAM)
    assert fields[b"origin_id"] == b"5-0" and fields[b"pk"] == b"Order:7"
    assert not any(k.startswith(b"dl_") for k in fields)


def test_unknown_model_or_module_is_a_usage_error() -> None:
    """A label no module registered, or a module that does not import: exit 2 with a reason."""
    code, _, err = run("check-indexes", "NoSuchModelHere")
    assert code == 2 and "no registered model 'NoSuchModelHere'" in err
    code, _, err = run("--models", "no_such_module_xyz", "check-indexes")
    assert code == 2 and "no_such_module_xyz" in err


def test_progress_bar_on_a_terminal_redraws_one_line() -> None:
    """On a TTY the bar redraws in place (carriage returns, one final newline); elsewhere
    it prints whole lines, never a carriage return."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = Progress(tty, "job")
    bar.update(5, 10)
    bar.update(10, 10, force=True)
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") >= 2 and text.count("\n") == 1 and text.endswith("\n")
    assert "job: 100%|" in text and "| 10/10 [" in text and "ETA 00:00" in text
    plain = io.StringIO()
    bar = Progress(plain, "job")
    bar.update(5, 10)
    bar.update(10, 10, force=True)
    assert "\r" not in plain.getvalue() and plain.getvalue().count("\n") == 2


def test_python_dash_m_ops_is_the_same_cli(redis_url: str) -> None:
    """``python -m popoto.ops`` runs the CLI in a fresh process (the popoto-ops entry point)."""
    proc = subprocess.run([sys.executable, "-m", "popoto.ops", "--redis-url", redis_url,
                           "--models", "popoto.ops.examples.models", "check-indexes"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "popoto.ops.examples.models.Note: ok total=0" in proc.stdout

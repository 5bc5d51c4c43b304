"""popoto-ops on bad input: one-line messages with exit 2, no tracebacks, no endless waits."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import popoto
from popoto.ops.cli import build_parser, main
from popoto import IndexedField, KeyField, Model
from popoto.registry import label_of
from popoto.tasks import jobs
from popoto.tasks.config import default_broker_url
from popoto.tasks.testing import wait_until

pytestmark = pytest.mark.standalone_only  # broker on the data server


class ErrPart(Model):
    sku = KeyField()
    bin = IndexedField(type=str)


LABEL = label_of(ErrPart)
REPO = Path(__file__).resolve().parents[2]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("popoto-ops: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def restore_config(redis_url: str) -> Iterator[None]:
    yield
    popoto.configure(url=redis_url)



def cli(*argv: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m popoto.ops ARGV`` in a fresh process (no model module imported by default)."""
    base = {k: v for k, v in os.environ.items() if k != "POPOTO_MODEL_MODULES"}
    return subprocess.run([sys.executable, "-m", "popoto.ops", *argv], capture_output=True,
                          text=True,
                          timeout=timeout, cwd=REPO, env={**base, **(env or {})})


@pytest.mark.parametrize("url", ["http://x", "redis://127.0.0.1:1/abc", "unix:///tmp/s?db=x",
                                 "redis://u:hunter2@127.0.0.1:1/abc"])
def test_bad_redis_url_is_one_line_exit_2(url: str, restore_config: None) -> None:
    code, _, err = run("--redis-url", url, "check-indexes", LABEL)
    line = one_line_error(err)
    assert code == 2 and "hunter2" not in line
    assert "scheme" in line or "database must be a whole number" in line


@pytest.mark.parametrize("modules", ["../../etc/passwd", "/etc/passwd", "os..path", "a b",
                                     "popoto.ops.examples.models,../x"])
def test_bad_model_module_name_is_one_line_exit_2(modules: str) -> None:
    code, _, err = run("--models", modules, "check-indexes", LABEL)
    line = one_line_error(err)
    assert code == 2 and "not a module name" in line


def test_module_failing_at_import_is_one_line_exit_2(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_models_xyz.py").write_text("raise RuntimeError('half-written\\nfile')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run("--models", "broken_models_xyz", "check-indexes", LABEL)
    line = one_line_error(err)
    assert code == 2 and "broken_models_xyz" in line and "half-written file" in line


def test_tracebacks_never_reach_the_terminal(redis_url: str) -> None:
    """In a real process: bad URL, bad module name, bad db: one line each, exit 2."""
    for argv in (["--redis-url", "http://x", "check-indexes"],
                 ["--redis-url", redis_url, "--models", "../../etc/passwd", "check-indexes"],
                 ["--redis-url", redis_url.rsplit("/", 1)[0] + "/abc", "check-indexes"]):
        proc = cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        one_line_error(proc.stderr)


def test_check_indexes_with_no_models_loaded_is_a_usage_error(redis_url: str) -> None:
    """Nothing to check is not "all healthy": exit 2 telling how to load models."""
    for command in ("check-indexes", "clean-indexes"):
        proc = cli("--redis-url", redis_url, command)
        line = one_line_error(proc.stderr)
        assert proc.returncode == 2
        assert "--models" in line and "POPOTO_MODEL_MODULES" in line
    ok = cli("--redis-url", redis_url, "check-indexes", env={
        "POPOTO_MODEL_MODULES": "popoto.ops.examples.models"})
    assert ok.returncode == 0, ok.stderr


def test_unknown_stream_is_an_error(r: redis.Redis) -> None:
    code, out, err = run("streams", "--stream", "nosuch")
    line = one_line_error(err)
    assert code == 2 and "stream:nosuch" in line and "does not exist" in line
    code, _, err = run("replay-dead-letters", "--stream", "nosuch")
    assert code == 2 and "does not exist" in one_line_error(err)
    r.set("stream:plain", "x")
    code, _, err = run("streams", "--stream", "plain")
    assert code == 2 and "not a stream" in one_line_error(err)


def test_bad_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["check-indexes", "--batch-size", "0"], ["jobs", "--limit", "-1"],
                 ["rebuild-indexes", LABEL, "--async", "--wait", "--timeout", "0"],
                 ["rebuild-indexes", LABEL, "--async", "--wait", "--timeout", "nan"],
                 ["replay-dead-letters", "--stream", "s", "--count", "0"]):
        assert run(*argv)[0] == 2, argv
        assert capsys.readouterr().err.count("\n") == 1, argv


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help")[0] == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in text


def test_wait_has_a_default_timeout() -> None:
    args = build_parser().parse_args(["rebuild-indexes", LABEL, "--async", "--wait"])
    assert args.timeout == 600


def test_unknown_job_is_exit_1_and_queued_job_is_known(broker: redis.Redis) -> None:
    """A job enqueued but not started yet is "queued"; an id nobody enqueued is unknown."""
    code, _, err = run("jobs", "no-such-job")
    assert code == 1 and "no job 'no-such-job'" in err
    code, out, _ = run("rebuild-indexes", LABEL, "--async")
    job_id = out.strip()
    assert code == 0
    code, out, _ = run("jobs", job_id)
    assert code == 0 and f"{job_id} rebuild {LABEL} queued" in out
    assert jobs.get(job_id)["status"] == "queued"
    assert any(s["id"] == job_id for s in jobs.recent())


def test_ctrl_c_while_waiting_is_one_line_exit_130(redis_url: str, broker: redis.Redis) -> None:
    """--wait with no worker, interrupted: no traceback, exit 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "popoto.ops", "--redis-url", redis_url,
         "--models", "popoto.ops.examples.models",
         "rebuild-indexes", "Note", "--async", "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "CELERY_BROKER_URL": default_broker_url(redis_url)})
    try:
        wait_until(lambda: broker.llen("maintenance") == 1, timeout=30, message="enqueued")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert one_line_error(err) == "popoto-ops: interrupted"
    assert len(out.split()) == 1  # the job id, printed before waiting

"""``popoto-ops dashboard``: uvicorn serving popoto.dashboard on 127.0.0.1 by default;
the CLI's conventions for errors (one line, exit 2), Ctrl-C (130) and SIGTERM (0)."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from popoto.ops.cli import main
from popoto.tasks.testing import Process, spawn
from tests.ops.web_helpers import http, listening_url

pytestmark = pytest.mark.standalone_only


@pytest.fixture
def dashboard(redis_url: str) -> Iterator[Process]:
    env = {"REDIS_URL": redis_url, "POPOTO_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
           "POPOTO_DASHBOARD_TOKEN": ""}
    proc = spawn([sys.executable, "-m", "popoto.ops.cli", "--models", "popoto.ops.examples.models",
                  "dashboard", "--port", "0"], env, ready='"dashboard listening"')
    with proc:
        yield proc


def test_serves_the_dashboard_on_loopback_and_stops_on_sigterm(dashboard: Process) -> None:
    url = listening_url(dashboard.output(), "dashboard listening")
    assert url and url.startswith("http://127.0.0.1:")
    assert f"popoto-ops: dashboard on {url}/ (read-only" in dashboard.output()
    status, headers, body = http("GET", f"{url}/")
    assert status == 200 and b"popoto.ops.examples.models.Note" in body
    assert b'id="read-only"' in body
    assert http("GET", f"{url}/metrics")[0] == 200
    assert http("POST", f"{url}/actions/check/popoto.ops.examples.models.Note")[0] == 403
    dashboard.popen.send_signal(signal.SIGTERM)
    assert dashboard.popen.wait(timeout=20) == 0
    assert '"dashboard stopped"' in dashboard.output()


def test_ctrl_c_is_exit_130_in_one_line(dashboard: Process) -> None:
    dashboard.popen.send_signal(signal.SIGINT)
    assert dashboard.popen.wait(timeout=20) == 130
    assert dashboard.output().rstrip().endswith("popoto-ops: interrupted")
    assert "Traceback" not in dashboard.output()


def test_a_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out, err = io.StringIO(), io.StringIO()
        code = main(["--models", "popoto.ops.examples.models", "dashboard", "--port", str(port)],
                    out=out, err=err)
    assert code == 2
    assert err.getvalue() == (f"popoto-ops: cannot listen on 127.0.0.1:{port}: "
                              "Address already in use\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["dashboard", "--port", "70000"], "not a port number"),
    (["dashboard", "--chunk-size", "0"], "not a whole number"),
    (["--redis-url", "redis://127.0.0.1:1/0", "dashboard"], "127.0.0.1:1"),
])
def test_bad_options_and_unreachable_redis_are_one_line(argv: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "popoto.ops.cli", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_without_the_extra_the_error_names_it() -> None:
    code = ("import sys; sys.modules['starlette'] = None\n"
            "from popoto.ops.cli import main; sys.exit(main(['dashboard']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("popoto-ops: popoto.dashboard needs the 'dashboard' extra")
    assert "popoto-redis[dashboard]" in result.stderr and len(result.stderr.splitlines()) == 1

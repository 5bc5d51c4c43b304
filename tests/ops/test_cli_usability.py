"""popoto-ops for people and scripts: global options before or after the command,
progress with rate and ETA for check, clean and rebuild, help on every argument,
``--version``, plain help text, plain output off a terminal, bad settings as one line."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import popoto
from popoto.ops.cli import build_parser, main
from popoto import IndexedField, KeyField, Model, SortedField
from popoto.registry import label_of

from popoto.ops.examples.models import Note

pytestmark = pytest.mark.standalone_only  # unsharded key names

REPO = Path(__file__).resolve().parents[2]


class UxPart(Model):
    sku = KeyField()
    bin = IndexedField(type=str)
    weight = SortedField(type=float)


LABEL = label_of(UxPart)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def parts(n: int) -> None:
    UxPart.bulk_create([UxPart(sku=f"s{i}", bin=f"b{i % 3}", weight=float(i))
                        for i in range(n)])


def test_global_options_work_after_the_command(redis_url: str) -> None:
    """--json, --models and --redis-url are read after the command as well as before."""
    parts(3)
    try:
        for argv in (["--json", "check-indexes", LABEL], ["check-indexes", LABEL, "--json"],
                     ["check-indexes", "--json", LABEL],
                     ["check-indexes", LABEL, "--redis-url", redis_url, "--json",
                      "--models", "popoto.ops.examples.models"]):
            code, out, _ = run(*argv)
            assert code == 0 and json.loads(out)[LABEL]["total"] == 0, argv
        code, out, _ = run("jobs", "--json", "--limit", "1")
        assert code == 0 and json.loads(out) == []
        assert run("check-indexes", LABEL)[1].startswith(f"{LABEL}: ok")  # not JSON
    finally:
        popoto.configure(url=redis_url)


def test_an_option_before_the_command_is_not_reset_by_the_command() -> None:
    """A global option given only before the command keeps its value."""
    args = build_parser().parse_args(["--json", "--models", "a.b", "jobs"])
    assert args.json is True and args.model_modules == "a.b"
    args = build_parser().parse_args(["jobs", "--models", "c.d"])
    assert args.json is False and args.model_modules == "c.d"


def test_check_clean_and_rebuild_show_rate_and_eta(r: redis.Redis) -> None:
    """Each phase draws its progress on stderr: done/total, objects per second, ETA."""
    parts(120)
    r.delete("UxPart:s1")
    code, out, err = run("check-indexes", LABEL, "--batch-size", "40")
    assert code == 1 and "PROBLEMS" in out
    for phase in ("UxPart check indexes: 100%|", "UxPart check instances: 100%|"):
        assert phase in err, err
    assert "| 119/119 [" in err and "obj/s, elapsed " in err and ", ETA 00:00" in err
    code, out, err = run("clean-indexes", LABEL)
    assert code == 0 and "UxPart clean: 100%|" in err and "removed=" in err
    assert ", ETA 00:00" in err
    code, _, err = run("rebuild-indexes", LABEL)
    assert code == 0 and "UxPart reindex: 100%|" in err and "UxPart clean: 100%|" in err
    assert run("check-indexes", LABEL)[0] == 0


def test_progress_off_a_terminal_is_plain_lines(r: redis.Redis) -> None:
    """Piped: whole lines, no carriage return, no escape sequence; stdout stays clean."""
    parts(30)
    code, out, err = run("--json", "rebuild-indexes", LABEL)
    assert code == 0 and "\r" not in err and "\x1b" not in err
    assert all(line.startswith("UxPart ") for line in err.splitlines())
    assert "rebuilt the indexes of 30 instances" in out


def test_on_a_terminal_the_bar_is_redrawn_in_place(redis_url: str) -> None:
    """In a pty, each phase of a rebuild is one bar redrawn with carriage returns (a
    newline only when the phase ends), without colours."""
    Note.bulk_create([Note(title=f"n{i}", tag=f"t{i % 4}", score=float(i)) for i in range(50)])
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "popoto.ops", "rebuild-indexes", "popoto.ops.examples.models.Note",
         "--redis-url", redis_url, "--models", "popoto.ops.examples.models", "--batch-size", "10"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, cwd=REPO,
        env={**os.environ, "TERM": "xterm"}, text=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the pty is closed once the process is gone
            break
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    text = "".join(chunks)
    assert proc.returncode == 0 and "rebuilt the indexes of 50 instances" in out
    lines = text.replace("\r\n", "\n").split("\n")
    assert [line.rsplit("\r", 1)[-1].split(":")[0] for line in lines if line] == \
        ["Note reindex", "Note clean"]
    assert "\r" in text and "| 50/50 [" in text and "\x1b[3" not in text


def every_action(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {a.dest}", a) for a in sub._actions]
        else:
            found.append((action.dest, action))
    return found


def test_every_argument_has_help_text() -> None:
    """Every option and positional argument of every command explains itself."""
    missing = [name for name, action in every_action(build_parser())
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []


def test_version_and_help_are_plain(capsys: pytest.CaptureFixture[str]) -> None:
    """--version names the distribution; the help has no reST markup and lists exit codes."""
    proc = subprocess.run([sys.executable, "-m", "popoto.ops", "--version"], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"popoto-ops {popoto.__version__} (popoto-redis)"
    assert run("--help")[0] == 0
    text = capsys.readouterr().out
    for markup in ("``", ":data:", ":func:", ":mod:", ".. "):
        assert markup not in text
    assert text.splitlines()[0].startswith("usage: popoto-ops")
    assert "exit codes:" in text and "before or after the command" in text
    assert run("rebuild-indexes", "--help")[0] == 0
    sub = capsys.readouterr().out
    assert "--timeout SECONDS" in sub and "exit codes:" in sub and "--json" in sub


@pytest.mark.parametrize("env, needle", [
    ({"CELERY_VISIBILITY_TIMEOUT": "soon"},
     "CELERY_VISIBILITY_TIMEOUT='soon': expected an integer"),
    ({"POPOTO_TASK_TIME_LIMIT": "9000"}, "time limits must satisfy"),
    ({"REDIS_URL": "nonsense://x"}, "nonsense://x"),
])
def test_a_bad_setting_is_one_line(env: dict[str, str], needle: str) -> None:
    """A bad environment variable: exit 2, one line naming it, no traceback."""
    base = {k: v for k, v in os.environ.items() if k not in ("POPOTO_MODEL_MODULES", "REDIS_URL")}
    proc = subprocess.run([sys.executable, "-m", "popoto.ops", "--models",
                           "popoto.ops.examples.models", "jobs"], capture_output=True,
                          text=True, timeout=60, cwd=REPO,
                          env={**base, **env})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("popoto-ops: ") and needle in lines[0]

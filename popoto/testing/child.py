"""Run the CLIs' child command, forwarding SIGINT/SIGTERM, and return its exit status.

Shared by ``python -m popoto.testing.server run`` and ``python -m
popoto.testing.cluster run``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

__all__ = ["run_command"]


def _exit_code(returncode: int) -> int:
    """Map a Popen return code to a shell-style exit status."""
    return 128 - returncode if returncode < 0 else returncode


def _same_process_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == os.getpgrp()
    except OSError:
        return False


def _restore_mask(mask: set[int | signal.Signals]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def run_command(prog: str, cmd: list[str], env: dict[str, str]) -> int:
    """:func:`_run_child`, or 127 with a message naming ``prog`` when ``cmd`` cannot start."""
    try:
        return _run_child(cmd, env)
    except OSError as exc:
        print(f"{prog}: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127


def _run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` forwarding SIGINT/SIGTERM to it; return its exit status."""
    forwarded = (signal.SIGINT, signal.SIGTERM)
    if not hasattr(signal, "sigtimedwait"):  # e.g. macOS: plain handlers
        proc = subprocess.Popen(cmd, env=env)

        def _forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        previous = {s: signal.signal(s, _forward) for s in forwarded}
        try:
            return _exit_code(proc.wait())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # Linux: block the signals and collect them with sigtimedwait, which tells us
    # who sent them. A Ctrl-C typed in the terminal is delivered by the kernel to
    # the whole foreground process group, so the child already has it; forwarding
    # it again would turn a graceful shutdown into a forced one (e.g. Celery).
    waited = {*forwarded, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            # The CLI is single-threaded, so preexec_fn is safe here: it restores the
            # signal mask in the child, which would otherwise inherit the blocked set.
            preexec_fn=lambda: _restore_mask(old_mask),  # noqa: PLW1509
        )
        while True:
            code = proc.poll()
            if code is not None:
                return _exit_code(code)
            info = signal.sigtimedwait(waited, 0.5)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            from_terminal = info.si_code == 0x80  # SI_KERNEL: tty-generated
            if from_terminal and _same_process_group(proc.pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(info.si_signo)
    finally:
        # Drop signals still pending (e.g. the Ctrl-C the child already handled) so
        # that unblocking them does not raise KeyboardInterrupt here.
        while signal.sigtimedwait(waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

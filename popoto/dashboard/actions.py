"""What the dashboard's actions do, once :mod:`popoto.dashboard.auth` let them through.

* ``check``, ``rebuild``, ``clean`` of a model: a background job, enqueued like
  ``popoto-ops rebuild-indexes --async`` does (:func:`popoto.tasks.submit.submit_job`);
  the answer redirects to the page the form came from, which shows the job;
* ``replay`` of a stream: its dead letters go back on it
  (:func:`popoto.workers.streams.replay_dead_letters`).

After an action the browser is redirected with a short code in the query string
(``?flash=job&job=<id>``, ``?flash=replayed&n=3``), which :func:`flash` turns
into a fixed sentence: no text of the request is shown back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from popoto.redis_db import get_client
from popoto.registry import label_of
from popoto.tasks import jobs
from popoto.tasks.app import app as celery_app
from popoto.tasks.submit import submit_job
from popoto.workers.streams import replay_dead_letters

from . import data

JOB_ACTIONS = ("check", "rebuild", "clean")


@dataclass
class Outcome:
    status: int = 303
    error: str = ""
    params: dict[str, str] = field(default_factory=dict)
    logged: dict[str, Any] = field(default_factory=dict)

    def redirect(self, base: str, form: Mapping[str, Any]) -> str:
        target = next_path(base, form)
        joiner = "&" if "?" in target else "?"
        return f"{target}{joiner}{urlencode(self.params)}" if self.params else target


def next_path(base: str, form: Mapping[str, Any]) -> str:
    """The form's ``next`` when it is a path of this dashboard, else its front page."""
    wanted = str(form.get("next", ""))
    home = f"{base}/"
    if not wanted.startswith(home) or "//" in wanted or "\\" in wanted or "\n" in wanted:
        return home
    return wanted.split("?", 1)[0]


def run(kind: str, target: str, chunk_size: int | None) -> Outcome:
    """Do action ``kind`` on ``target`` (a model label or a stream key)."""
    if kind in JOB_ACTIONS:
        model = data.find_model(target)
        if model is None:
            return Outcome(404, f"no model {target!r} is registered here")
        label = label_of(model)
        kwargs = {"chunk_size": chunk_size} if chunk_size and kind != "check" else {}
        job_id = submit_job(kind, label, kwargs)
        return Outcome(params={"flash": "job", "job": job_id},
                       logged={"model": label, "job_id": job_id})
    if kind == "replay":
        if data.stream(target) is None:
            return Outcome(404, f"no stream {target!r}")
        replayed = replay_dead_letters(get_client(), target)
        return Outcome(params={"flash": "replayed", "n": str(replayed)},
                       logged={"stream": target, "replayed": replayed})
    return Outcome(404, f"no action {kind!r}")


def flash(params: Mapping[str, str]) -> str | None:
    """The sentence for the code an action redirected with (None without one)."""
    code = params.get("flash")
    if code == "job":
        state = jobs.get(params.get("job", ""))
        if state is None:
            return None
        return f"{state.get('kind')} of {state.get('model')} enqueued as job {state.get('id')}"
    if code == "replayed":
        n = params.get("n", "")
        return f"replayed {int(n)} dead letter(s)" if n.isdigit() and len(n) < 10 else None
    return None


def beat_schedule() -> dict[str, Any]:
    """The beat schedule of ``popoto.tasks.app`` (what ``celery -A popoto.tasks beat`` runs)."""
    return dict(celery_app.conf.beat_schedule or {})

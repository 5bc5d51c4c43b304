"""Concurrent saves of ONE sharded instance with different unique values leave exactly the
claim of the value it ends up holding (no stale claim in its name, check_indexes clean).

The race: writer B's save releases value a that writer A wrote just before, while A has
not yet confirmed its pending claim of a (B's compare-and-set on the plain key fails); A's
confirm then made the claim of a permanent although the instance now holds B's value.
"""

import multiprocessing

import pytest

import popoto
from popoto import KeyField, Model, StringField
from tests.helpers import worker_url

CTX = multiprocessing.get_context("spawn")
PROCESSES = 8
SAVES = 300


class Member(Model):
    org = KeyField()
    handle = StringField(unique=True, null=True)

    class Meta:
        namespace = "RaceMember"
        shards = 16


def _saver(url, barrier, me, out):
    popoto.configure(url=url)
    member = Member.query.get(org="acme")
    barrier.wait()
    errors = 0
    for i in range(SAVES):
        member.handle = f"p{me}-{i % 3}"
        try:
            member.save()
        except popoto.ModelException:
            errors += 1  # a lease overrun or a value in flight: nothing written
    out.put(errors)


def _claims(r):
    """{claim value token: holder} over every claim hash of Member.handle."""
    held = {}
    for ns in Member._meta.groups:
        for field, holder in r.hgetall(Member.handle.unique_key(ns)).items():
            held[field.decode()] = holder.decode()
    return held


@pytest.mark.slow
@pytest.mark.parametrize("run", range(2))
def test_8_processes_saving_one_instance_leave_one_claim(redis_url, r, run):
    """8 processes x 300 saves of one instance, each with its own values: afterwards the
    instance's value has exactly one claim, in its name, and nothing else is claimed."""
    Member.create(org="acme", handle="start")
    barrier, out = CTX.Barrier(PROCESSES), CTX.Queue()
    url = worker_url(redis_url)
    procs = [CTX.Process(target=_saver, args=(url, barrier, i, out)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    errors = sum(out.get() for _ in procs)
    final = Member.query.get(org="acme")
    assert _claims(r) == {Member.handle.unique_token(final.handle): final.pk}, errors
    report = Member.check_indexes()
    assert report["total"] == 0, report

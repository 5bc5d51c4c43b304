"""popoto-ops index commands on a sharded model (``Meta.shards``): counts over every group."""

from __future__ import annotations

import io
import json
from typing import Any

from popoto.ops.cli import main
from popoto import IndexedField, KeyField, Model, SortedField, keys
from popoto.registry import label_of


class CliShard(Model):
    sku = KeyField()
    bin = IndexedField(type=str)
    weight = SortedField(type=float)

    class Meta:
        shards = 4


LABEL = label_of(CliShard)
META = CliShard._meta


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def parts(n: int) -> None:
    for i in range(n):
        CliShard.create(sku=f"s{i:03d}", bin=f"b{i % 3}", weight=float(i))


def key(i: int) -> str:
    return META.instance_key((f"s{i:03d}",))


def test_check_indexes_reports_every_group(r: Any) -> None:
    """check-indexes sums over the groups (instances, orphans) and names the group count."""
    parts(40)
    code, out, _ = run("check-indexes", LABEL)
    assert code == 0 and f"{LABEL}: ok total=0" in out and "instances=40 groups=4" in out
    gone = [key(i) for i in range(0, 40, 10)]
    assert len({keys.ns_of(k) for k in gone} | {keys.ns_of(key(i)) for i in range(40)}) == 4
    for k in gone:
        r.delete(k)
    code, out, _ = run("--json", "check-indexes", LABEL)
    report = json.loads(out)[LABEL]
    assert code == 1 and report["orphans"] == 4 * 3 and report["instances"] == 36


def test_clean_indexes_removes_orphans_of_every_group(r: Any) -> None:
    """clean-indexes removes the orphans of all groups at once."""
    parts(30)
    for i in range(0, 30, 3):
        r.delete(key(i))
    code, out, _ = run("clean-indexes", LABEL)
    assert code == 0 and f"{LABEL}: removed 30 index entries" in out
    assert run("check-indexes", LABEL)[0] == 0


def test_rebuild_indexes_progress_counts_every_group(r: Any) -> None:
    """rebuild-indexes: progress total is the class-set size summed over groups; repaired."""
    parts(120)
    for group in META.groups:
        r.delete(keys.field_index_key("SortedF", group, "weight"))
        r.delete(keys.field_index_key("IndexF", group, "bin", "b1"))
    assert run("check-indexes", LABEL)[0] == 1
    code, out, err = run("rebuild-indexes", LABEL, "--batch-size", "25")
    assert code == 0 and "rebuilt the indexes of 120 instances" in out
    assert "| 120/120 [" in err
    assert run("check-indexes", LABEL)[0] == 0
    assert CliShard.query.filter(bin="b1").count() == 40
    assert [p.sku for p in CliShard.query.filter(weight__lt=2)] == ["s000", "s001"]


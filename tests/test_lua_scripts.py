"""The server-side scripts: popoto/lua/*.lua, the prelude of shared constants, includes."""

from __future__ import annotations

import importlib
import re
from importlib import resources
from pathlib import Path

import pytest

from popoto import protocol
from popoto.engine import scripts

# every module that defines scripts (importing it registers them)
SCRIPT_MODULES = (
    "popoto", "popoto.engine.claims", "popoto.models.bulk", "popoto.models.counters",
    "popoto.fields.decaying",
    "popoto.behaviours.access_tracker", "popoto.behaviours.write_filter",
    "popoto.models.maintenance.clean", "popoto.tasks.jobs", "popoto.tasks.rebuild",
    "popoto.tasks.chunking",
    "popoto.workers.streams", "popoto.workers.idempotency",
)
LUA_DIR = resources.files("popoto").joinpath("lua")
LUA_FILES = {p.name[:-4]: p.read_text(encoding="utf-8") for p in LUA_DIR.iterdir()
             if p.name.endswith(".lua")}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def registry() -> list[scripts.LuaScript]:
    for name in SCRIPT_MODULES:
        importlib.import_module(name)
    return list(scripts.REGISTRY)


def test_every_script_loads_on_the_server(r, registry):
    """SCRIPT LOAD compiles each body (Redis 6.2's Lua 5.1: syntax, at most 200 locals)."""
    assert len(registry) >= 24
    for script in registry:
        assert r.script_load(script.body) == script.sha, script.name


def test_every_lua_file_is_a_script_or_an_included_fragment(registry):
    names = {s.name for s in registry}
    included = {f for text in LUA_FILES.values() for f in scripts.includes_of(text)}
    assert included == {"remove_entries", "run_commands", "save_one", "read_rows"}
    assert set(LUA_FILES) == names | included
    assert not included & names


def test_a_body_is_the_prelude_then_its_includes_then_the_file():
    body = scripts.script_body("save")
    assert body == (protocol.lua_prelude() + LUA_FILES["remove_entries"]
                    + LUA_FILES["run_commands"] + LUA_FILES["save_one"] + LUA_FILES["save"])
    assert scripts.SAVE.body == body
    assert scripts.script_body("claim") == protocol.lua_prelude() + LUA_FILES["claim"]


def test_includes_are_read_from_the_first_line_only():
    assert scripts.includes_of("--! include: a b, c\nx = 1\n") == ["a", "b", "c"]
    assert scripts.includes_of("-- KEYS: x\n--! include: a\n") == []
    assert scripts.includes_of("") == []


def test_a_body_given_is_used_as_it_is():
    script = scripts.LuaScript("test_given_body", "return 1\n")
    try:
        assert script.body == "return 1\n"
    finally:
        scripts.REGISTRY.remove(script)


def test_prelude_declares_every_shared_constant_with_its_value():
    prelude = protocol.lua_prelude()
    assert "local KIND_SET = 'S'\n" in prelude
    assert "local ERR_UNIQUE = 'POPOTO_UNIQUE'\n" in prelude
    assert "local IDX_PREFIX = '@idx:'\n" in prelude
    assert "local OP_RANGE = 'ZR'\n" in prelude
    assert "local DECAY_DAY_S = 86400\n" in prelude
    assert "local DECAY_MAX_AMPLITUDE = 100.0\n" in prelude
    declared = re.findall(r"^local (\w+) = ", prelude, re.M)
    assert declared == sorted(protocol._SHARED)
    assert protocol._lua_literal("a'b\\c\nd") == "'a\\'b\\\\c\\nd'"
    with pytest.raises(TypeError):
        protocol._lua_literal(float("inf"))


def test_prelude_values_reach_lua(r):
    """What Lua sees for each shared constant is the Python value."""
    names = sorted(protocol._SHARED)
    probe = scripts.LuaScript("test_prelude_probe", protocol.lua_prelude()
                              + "return {" + ", ".join(f"tostring({n})" for n in names) + "}\n")
    try:
        got = probe(r, [], [])
    finally:
        scripts.REGISTRY.remove(probe)
    for name, value in zip(names, got):
        expected = protocol._SHARED[name]
        if isinstance(expected, str):
            assert value.decode() == expected, name
        else:
            assert float(value) == expected, name


def test_luacheckrc_declares_the_prelude_names():
    """The lint config's read-only globals are exactly the prelude's names."""
    config = (REPO / ".luacheckrc").read_text()
    block = config.split("-- begin prelude", 1)[1].split("-- end prelude", 1)[0]
    assert sorted(re.findall(r'"(\w+)"', block)) == sorted(protocol._SHARED)


def test_scripts_spell_no_shared_literal():
    """Kinds, tags and the record prefix come from the prelude, not from literals."""
    for name, text in LUA_FILES.items():
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        assert "POPOTO_" not in code, name
        assert "@idx:" not in code, name
        assert not re.search(r"[=~]= '[A-Z]'|\{'[A-Z]',", code), name  # a kind, flag

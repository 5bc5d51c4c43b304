"""The curated public API of the popoto package."""

import popoto

EXPECTED = [
    "AccessTrackerMixin",
    "AutoKeyField",
    "BooleanField",
    "BulkWriteError",
    "BytesField",
    "CappedListProxy",
    "ConnectionConfigError",
    "CyclicDecayField",
    "DB_key",
    "DateField",
    "DatetimeField",
    "DecayingSortedField",
    "DecimalField",
    "DecodeError",
    "DictField",
    "EventStreamMixin",
    "Field",
    "FieldUsageError",
    "FloatField",
    "GeoField",
    "IndexedField",
    "IntField",
    "KeyField",
    "KeyMutationError",
    "ListField",
    "Model",
    "ModelBase",
    "ModelException",
    "NotImplementedMethodError",
    "PopotoError",
    "Q",
    "QueryException",
    "Relationship",
    "SetField",
    "SkipSaveException",
    "SortedField",
    "SortedKeyField",
    "StringField",
    "TemporalPeriod",
    "TimeField",
    "TupleField",
    "UniqueKeyField",
    "UniqueViolation",
    "UnknownFieldError",
    "WriteFilterMixin",
    "configure",
    "get_model",
    "get_redis",
]


def test_all_is_pinned_and_sorted():
    """__all__ lists exactly the public names, in sorted order."""
    assert popoto.__all__ == EXPECTED
    assert popoto.__all__ == sorted(popoto.__all__)


def test_every_exported_name_exists():
    """Every name in __all__ is importable from popoto."""
    for name in popoto.__all__:
        assert hasattr(popoto, name), name


def test_py_typed_shipped():
    """The package ships a py.typed marker for type checkers."""
    from pathlib import Path

    assert (Path(popoto.__file__).parent / "py.typed").exists()


def test_import_does_not_connect():
    """Importing popoto and defining a model never opens a connection."""
    import subprocess
    import sys

    code = (
        "import popoto\n"
        "from popoto import KeyField, Model\n"
        "class NoConnect(Model):\n"
        "    name = KeyField()\n"
        "print(NoConnect._meta.model_name)\n"
    )
    # port 1 on loopback: nothing listens there, so any connection attempt would fail
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NoConnect"

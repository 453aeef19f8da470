"""Every registered connector is named consistently and runs the connector contract."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

import pytest

from bridge.registry import GROUP, connector_class, connector_kinds
from connectors.memory import MemoryConfig, MemoryConnector
from tests.contract import ConnectorContract

TESTS = Path(__file__).resolve().parent


def contract_classes() -> list[type[ConnectorContract]]:
    """Every subclass of the contract in the test modules (importing them all first)."""
    for path in sorted(TESTS.rglob("test_*.py")):
        importlib.import_module(".".join(path.relative_to(TESTS.parent).with_suffix("").parts))
    found: list[type[ConnectorContract]] = []
    todo = [ConnectorContract]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def uncovered(kinds: Iterable[str], classes: Iterable[type[ConnectorContract]]) -> list[str]:
    """The kinds that no collected test class (``Test...``) runs the contract for."""
    covered = {getattr(cls, "kind", None) for cls in classes if cls.__name__.startswith("Test")}
    return sorted(set(kinds) - covered)


def test_every_registered_connector_runs_the_contract() -> None:
    missing = uncovered(connector_kinds(), contract_classes())
    assert not missing, (
        f"registered in {GROUP} without contract tests: {', '.join(missing)}. Add "
        "tests/test_<kind>_connector.py with `class Test<Kind>Connector(ConnectorContract)` "
        'setting `kind = "<kind>"`.'
    )


def test_the_coverage_check_notices_a_connector_without_tests() -> None:
    from tests.test_memory_connector import TestMemoryConnector

    assert TestMemoryConnector in contract_classes()
    assert uncovered(["memory", "jira"], [TestMemoryConnector]) == ["jira"]
    assert uncovered(["memory"], [ConnectorContract]) == ["memory"], "a base class runs nothing"


def test_module_config_kind_and_entry_point_are_one_word() -> None:
    kinds = connector_kinds()
    assert "memory" in kinds
    for kind in kinds:
        cls = connector_class(kind)
        field = cls.config_model.model_fields["kind"]
        assert cls.kind == kind, f"{cls.__name__}.kind is {cls.kind!r}, registered as {kind!r}"
        assert get_args(field.annotation) == (kind,), f"{cls.config_model.__name__}.kind"
        assert field.default == kind, f"{cls.config_model.__name__}.kind default"
        assert cls.__module__.split(".")[:2] == ["connectors", kind], cls.__module__


def test_memory_is_registered() -> None:
    assert connector_class("memory") is MemoryConnector
    assert MemoryConnector.config_model is MemoryConfig
    assert MemoryConnector.__module__ == "connectors.memory"
    with pytest.raises(KeyError):
        connector_class("no-such-tool")

"""Connector discovery through the ``salesbridge.connectors`` entry-point group.

Built-in and third-party connectors register the same way, so an outside package can add a
tool without touching this repository. Nothing is imported until asked for.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from connectors.base import Connector, ConnectorConfig

GROUP = "salesbridge.connectors"


def connector_kinds() -> list[str]:
    """Names of every registered connector kind, sorted."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def connector_class(kind: str) -> type[Connector[ConnectorConfig]]:
    """The connector class registered as ``kind``. Raises KeyError for an unknown kind."""
    for ep in entry_points(group=GROUP, name=kind):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Connector)):
            raise TypeError(f"entry point {GROUP}:{kind} is not a Connector subclass")
        return cls
    raise KeyError(kind)

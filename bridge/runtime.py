"""Wiring: from a loaded config to a store, connectors, mapping specs and a sync engine.

The CLI, the scheduler and the demo all build their parts here, so there is one way to do it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from bridge.config import LoadedConfig
from bridge.errors import UserError
from bridge.mapping import MappingSpec, load_mapping
from bridge.registry import connector_class
from bridge.store import Store
from bridge.sync import SyncEngine
from connectors.base import Connector, ConnectorConfig


def build_connector(loaded: LoadedConfig, name: str) -> Connector[ConnectorConfig]:
    """Instantiate the configured connector ``name``."""
    if name not in loaded.connectors:
        known = ", ".join(loaded.connectors) or "none configured"
        raise UserError(f"no connector named {name!r} in the config (known: {known})")
    cfg = loaded.connectors[name]
    return connector_class(cfg.kind)(name, cfg)


def load_specs(
    loaded: LoadedConfig,
    connectors: dict[str, Connector[ConnectorConfig]],
    *,
    discover: bool = True,
) -> dict[str, MappingSpec]:
    """Load every connector's mapping, checked against its live schema when ``discover``.

    Problems in all files are collected and raised together.
    """
    specs: dict[str, MappingSpec] = {}
    problems = []
    for name, conn in connectors.items():
        try:
            specs[name] = load_mapping(
                loaded.mapping_path(name),
                conn.discover() if discover else None,
                lifecycle_keys=loaded.config.lifecycle.keys,
                connector=conn.kind,
            )
        except UserError as exc:
            problems += [p for p in exc.problems if p not in problems]  # shared files
    if problems:
        raise UserError(problems)
    return specs


@dataclass
class Runtime:
    loaded: LoadedConfig
    store: Store
    connectors: dict[str, Connector[ConnectorConfig]]
    engine: SyncEngine


@contextmanager
def open_runtime(loaded: LoadedConfig, *, only: list[str] | None = None) -> Iterator[Runtime]:
    """Open the store and the enabled connectors, load mappings, build the engine."""
    names = only or [n for n, c in loaded.connectors.items() if c.enabled]
    with ExitStack() as stack:
        connectors = {}
        for n in names:
            conn = build_connector(loaded, n)
            stack.callback(conn.close)
            connectors[n] = conn
        specs = load_specs(loaded, connectors)
        for n, conn in connectors.items():
            conn.select(specs[n].remote_fields_needed)
        store = Store.open(loaded.store_url())
        stack.callback(store.close)
        sync = loaded.config.sync
        engine = SyncEngine(
            store,
            connectors,
            specs,
            policy=sync.conflict_policy,
            breaker_threshold=sync.breaker_threshold,
            max_workers=sync.max_workers,
        )
        yield Runtime(loaded, store, connectors, engine)

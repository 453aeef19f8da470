"""Seeded emulators with a workspace and a runtime around them, as the demo builds them.

Every benchmark that talks HTTP starts the real emulators through :mod:`bridge.demo` (the same
builders, the same generated projects and history) and syncs them through the real runtime
(config, mappings, store, connectors, engine), so the figures are the product's.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.config import load_config
from bridge.demo import BUILDERS, ENV, DemoClock, Tool, write_workspace
from bridge.demo_data import DemoOptions, generate
from bridge.runtime import Runtime, open_runtime

KINDS = ("jira", "trello", "asana", "salesforce", "pipedrive")
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)

# A person's edit of one record in each tool (a field every mapping reads), by the demo's
# ``Tool.edit`` of that tool; ``i`` makes each edit a real change.
EDITS: dict[str, Any] = {
    "jira": lambda i: {"Probability": 10 + i % 80},
    "trello": lambda i: {"Probability": 10 + i % 80},
    "asana": lambda i: {"name": f"Renamed project {i}"},
    "salesforce": lambda i: {"Description": f"edited {i}"},
    "pipedrive": lambda i: {"title": f"Renamed deal {i}"},
}


def projects(count: int, seed: int = 7) -> list[Any]:
    return list(generate(DemoOptions(count=count, seed=seed, now=NOW)))


def seed_tool(kind: str, count: int) -> Tool:
    """One tool's emulator holding ``count`` generated projects with their history (started)."""
    tool = BUILDERS[kind](projects(count), DemoClock())
    tool.emulator.start()
    return tool


@dataclass
class World:
    tools: dict[str, Tool]
    rt: Runtime
    folder: Path

    def requests(self, kind: str) -> int:
        """Requests the tool's emulator has answered so far (exact: its own log)."""
        return len(self.tools[kind].emulator.controls.log)

    def counts(self) -> dict[str, int]:
        return {k: self.requests(k) for k in self.tools}


@contextmanager
def world(
    tools: dict[str, Tool], *, store_url: str | None = None, no_create: bool = True
) -> Iterator[World]:
    """A workspace over running ``tools`` and a runtime on it; closed (not the tools) on exit.

    ``no_create`` turns off creating projects across tools, so each tool syncs only its own
    records (the request figures are then per tool, not the demo's cross-tool creates).
    """
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sb-bench-")))
        config = write_workspace(folder / "ws", tools)
        text = config.read_text(encoding="utf-8")
        if store_url is not None:
            text = text.replace('url = "sqlite:///salesbridge.db"', f'url = "{store_url}"', 1)
        config.write_text(text, encoding="utf-8")
        if no_create:
            for m in (folder / "ws" / "mappings").glob("*.toml"):
                body = m.read_text(encoding="utf-8")
                body = re.sub(r"(?m)^create_when = .*$", "", body)
                body = re.sub(r'(?m)^create_in_tool = ".*"$', 'create_in_tool = "never"', body)
                m.write_text(body, encoding="utf-8")
        os.environ.update(ENV)
        loaded = load_config(config)
        rt = stack.enter_context(open_runtime(loaded))
        yield World(tools, rt, folder)

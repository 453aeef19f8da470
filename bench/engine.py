"""Engine throughput and memory: the memory connector (no network) through map, merge, store.

``throughput(n, url)``: n generated projects in a :class:`MemoryBackend`; a first full sync
creates them all in the hub, then every record is edited in the tool (probability and notes)
and a second sync merges each one field by field. Records per second is n / wall time of the
sync; the connector's own share (reading its backend, building records) is timed apart.

``python -m bench.engine rss N``: a *streaming* tool (pages built from generated projects as
they are asked for, nothing held) synced in full into a fresh SQLite store, then an incremental
sync with nothing changed; prints JSON with the wall times and the process's peak RSS
(``VmHWM``), before and after. Run in a subprocess per size, so each peak is its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bridge.demo import STAGE_NAMES, TOOL_FIELDS
from bridge.demo_data import DemoOptions, generate
from bridge.mapping import MappingSpec, parse_mapping
from bridge.model import get_path
from bridge.store import Store
from bridge.sync import SyncEngine
from connectors.base import Cursor, Page, RemoteRecord
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector, SteppingClock

REPO = Path(__file__).resolve().parent.parent
MAPPING = REPO / "mappings" / "memory.toml"
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PAGE = 500


def spec_for(connector: MemoryConnector) -> MappingSpec:
    """The reference memory mapping, creating nothing in the tool (one tool, one direction)."""
    text = MAPPING.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^create_in_tool = ".*"$', 'create_in_tool = "never"', text)
    return parse_mapping(text, source=str(MAPPING), schema=connector.discover(), connector="memory")


def tool_config(**settings: Any) -> MemoryConfig:
    return MemoryConfig(
        fields=dict(TOOL_FIELDS), stage_values=list(STAGE_NAMES.values()), **settings
    )


def remote_fields(spec: MappingSpec, project: dict[str, Any], ref: str) -> dict[str, Any]:
    values = {p: get_path(project, p) for p in spec.pushed_paths}
    return spec.to_remote({p: v for p, v in values.items() if v is not None}, ref=ref)


@contextlib.contextmanager
def store_at(url: str | None) -> Iterator[tuple[Store, str]]:
    """A fresh store: a temporary SQLite file (url None) or a schema of its own on PostgreSQL,
    dropped afterwards. Yields the store and a label."""
    if url is None:
        with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
            store = Store.open(f"sqlite:///{tmp}/bench.db")
            try:
                yield store, "SQLite (file, WAL)"
            finally:
                store.close()
        return
    schema = f"sb_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        scoped = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        store = Store.open(scoped)
        try:
            yield store, "PostgreSQL"
        finally:
            store.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def throughput(n: int, url: str | None = None) -> dict[str, Any]:
    """First sync (creates) and a second one after every record changed (merges), timed."""
    backend = MemoryBackend(clock=SteppingClock(NOW))
    conn = MemoryConnector("crm", tool_config(page_size=PAGE), backend=backend)
    spec = spec_for(conn)
    refs = [
        backend.add(remote_fields(spec, p.to_json(), p.id), actor="li.wei")
        for p in generate(DemoOptions(count=n, now=NOW))
    ]
    out: dict[str, Any] = {"records": n, "page_size": PAGE}
    with store_at(url) as (store, label):
        out["store"] = label
        engine = SyncEngine(store, {"crm": conn}, {"crm": spec})  # type: ignore[dict-item]
        for phase in ("create", "merge"):
            if phase == "merge":
                for i, ref in enumerate(refs):
                    backend.edit(ref, {"Probability": 5 + i % 90, "Notes": f"call {i}"})
            t0 = time.perf_counter()
            pages = sum(len(p.records) for p in conn.pull(Cursor({}), signpost=NOW, full=True))
            read = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = engine.run(push_to=[])  # map + merge + store; push planning is timed below
            wall = time.perf_counter() - t0
            counts = report.connectors["crm"].counts
            assert report.ok and pages == n, report.connectors["crm"].error
            out[phase] = {
                "seconds": wall,
                "per_second": n / wall,
                "connector_seconds": read,
                "engine_per_second": n / max(wall - read, 1e-9),
                "counts": dict(counts),
            }
        # A whole cycle with nothing changed: one empty page, then push planning over every
        # linked project (the database picks those whose pushed values differ from the bases).
        t0 = time.perf_counter()
        report = engine.run()
        out["idle_cycle_seconds"] = time.perf_counter() - t0
    return out


class StreamingConnector(MemoryConnector):
    """A tool of ``count`` generated projects whose pages are built as they are read.

    Nothing is held between pages, so the process's memory is the engine's and the store's.
    The cursor is the index of the next record; an incremental pull past the end reads none.
    """

    def __init__(self, count: int, spec_source: MemoryConnector) -> None:
        super().__init__("crm", tool_config(page_size=PAGE), backend=MemoryBackend())
        self.count = count
        self.spec = spec_for(spec_source)

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        start = 0 if full else int(cursor.get("") or 0)
        if start >= self.count:  # nothing new: a real tool answers this with one empty page
            return
        batch: list[RemoteRecord] = []
        for i, p in enumerate(generate(DemoOptions(count=self.count, now=NOW))):
            if i < start:
                continue
            data = p.to_json()
            batch.append(
                RemoteRecord(
                    ref=f"r{i}",
                    version="1",
                    fields=remote_fields(self.spec, data, f"r{i}"),
                    updated_at=NOW,
                    updated_by="li.wei",
                    url=None,
                )
            )
            if len(batch) == PAGE or i == self.count - 1:
                yield Page(batch, cursor.advanced("", str(i + 1)))
                batch = []


def _vm(key: str) -> float:
    """A VmXXX line of /proc/self/status, in MB."""
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss(n: int) -> dict[str, Any]:
    probe = MemoryConnector("crm", tool_config(), backend=MemoryBackend())
    conn = StreamingConnector(n, probe)
    out: dict[str, Any] = {"records": n, "baseline_mb": _vm("VmHWM")}
    with store_at(None) as (store, _):
        engine = SyncEngine(store, {"crm": conn}, {"crm": conn.spec})  # type: ignore[dict-item]
        t0 = time.perf_counter()
        report = engine.run()
        out["full_seconds"] = time.perf_counter() - t0
        assert report.ok, report.connectors["crm"].error
        out["created"] = report.connectors["crm"].counts["created"]
        out["peak_mb"] = _vm("VmHWM")
        t0 = time.perf_counter()
        report = engine.run()
        out["incremental_seconds"] = time.perf_counter() - t0
        out["peak_after_incremental_mb"] = _vm("VmHWM")
    return out


def rss_in_subprocess(n: int) -> dict[str, Any]:
    import subprocess

    done = subprocess.run(  # noqa: S603 - our own module, our interpreter
        [sys.executable, "-m", "bench.engine", "rss", str(n)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["rss"]:
        print(json.dumps(rss(int(sys.argv[2]))))
    else:
        print(json.dumps(throughput(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)))

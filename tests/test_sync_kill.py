"""Kill -9 a real `salesbridge sync` process at several points, rerun it, lose nothing.

The tools are file-backed memory connectors (what `salesbridge demo` uses), so the killed
process, its reruns and this test all see the same tools and the same SQLite store.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bridge.mapping import parse_mapping
from tests.test_sync_engine import MAPPING, REPO, Bridge, mapping_text, write_config

RECORDS = 60
# Where each run is killed: (what to watch, how many). Each point is later than the last.
KILL_AT = (
    ("projects", 15),  # pulling: some pages committed, the cursor part-way
    ("pushed", 5),  # pushing back to the source tool
    ("pushed", 40),
    ("board", 3),  # creating in the other tool
    ("board", 20),
    ("board", 45),
)


def seed(path: Path, count: int) -> None:
    """Write a memory tool's file holding ``count`` records at once (one add() per record
    would rewrite the file every time)."""
    spec = parse_mapping(mapping_text(), source=str(MAPPING))
    start = datetime(2024, 3, 1, tzinfo=UTC)
    records: dict[str, Any] = {}
    for i in range(1, count + 1):
        fields = spec.to_remote(
            {
                "name": f"Deal {i}",
                "stage": "lead",
                "customer.name": f"Customer {i % 7}",
                "priority": "high" if i % 3 else "low",
                "probability": i % 100,
            }
        )
        at = (start + timedelta(seconds=i)).isoformat(timespec="microseconds")
        records[f"MEM-{i}"] = {
            "partition": "",
            "fields": fields,
            "stamp": None,
            "version": 1,
            "deleted": False,
            "history": [],
            "updated_at": at,
            "updated_by": "li.wei@example.com",
        }
    state = {"next_id": count, "last_time": at, "records": records}
    path.write_text(json.dumps(state), encoding="utf-8")


def start_sync(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "sync", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def progress(root: Path, watch: str) -> int:
    """How far the sync got: hub projects, records pushed to the crm, records in the board."""
    if watch == "projects":
        db = root / "salesbridge.db"
        if not db.exists():
            return 0
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
                return int(conn.execute("select count(*) from projects").fetchone()[0])
        except sqlite3.OperationalError:  # not migrated yet
            return 0
    tool = root / "tools" / ("board.json" if watch == "board" else "crm.json")
    try:
        records = json.loads(tool.read_text(encoding="utf-8"))["records"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    if watch == "board":
        return len(records)
    return sum(1 for e in records.values() if e["updated_by"] == "salesbridge")


def reached(root: Path, watch: str, count: int) -> bool:
    return progress(root, watch) >= count


def wait_for(done: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Poll until ``done()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("the sync made no progress")


def test_sigkill_at_any_point_then_rerun_converges(tmp_path: Path) -> None:
    config = write_config(tmp_path, page_size=10)
    seed(tmp_path / "tools" / "crm.json", RECORDS)
    db = f"sqlite:///{tmp_path / 'salesbridge.db'}"
    killed = 0
    edited: dict[str, str] = {}
    for n, (watch, count) in enumerate(KILL_AT):
        proc = start_sync(config)
        try:
            if wait_for(partial(reached, tmp_path, watch, count), proc):
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
        # People keep working between the crashes.
        ref = f"MEM-{n * 7 + 1}"
        view = Bridge(db, path=tmp_path / "tools")
        try:
            view.edit("crm", ref, description=f"edited after kill {n}")
            edited[ref] = f"edited after kill {n}"
        finally:
            view.close()
    assert killed >= 4, "the runs finished before they could be killed"

    for _ in range(2):  # the second rerun picks up what the first pushed, and must find nothing
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "sync", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    bridge = Bridge(db, path=tmp_path / "tools")
    try:
        crm, board = bridge.live_records("crm"), bridge.live_records("board")
        assert len(crm) == RECORDS  # the bridge never created anything in the source tool
        stamps = [e["stamp"] for e in board.values()]
        assert None not in stamps
        assert len(stamps) == len(set(stamps)) == RECORDS, "duplicate records in the board"
        assert len(list(bridge.store.list_projects())) == RECORDS
        bridge.assert_converged()
        for ref, text in edited.items():
            pid = bridge.project_of("crm", ref)
            assert bridge.hub(pid)["description"] == text
            assert bridge.values("board", bridge.ref_of("board", pid))["description"] == text
        dry = subprocess.run(
            [sys.executable, "-m", "bridge", "sync", "--dry-run", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert dry.returncode == 0, dry.stdout + dry.stderr
    finally:
        bridge.close()

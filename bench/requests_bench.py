"""Requests per sync, per connector, counted by the emulators themselves (exact).

For each tool and size N: the tool's emulator is seeded with N generated projects and their
history (:mod:`bridge.demo` builders), and the real runtime syncs it alone:

* *setup*: what opening the connector costs (log-in, schema discovery for the mapping check);
* *full pull*: the first sync (a census: every record is new);
* *incremental, 0 changes*: the next sync;
* *incremental, 1 % changed*: after people edit 1 % of the records in the tool;
* *push K*: K = 1 % of the projects renamed in the hub, pushed to the tool.

Counts are the emulator's request log (every request that reached it, whatever client made
it), so they are exact and repeatable. Pulls run with ``push_to=[]`` (push planning makes no
request) and the push phase pulls nothing (``only=[]``), so each figure is that step alone.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from bench.tools import EDITS, World, seed_tool, world

PAGE = {"jira": 100, "trello": 1000, "asana": 100, "salesforce": 2000, "pipedrive": 500}
"""The largest page each connector asks for (records per listed page; Trello: actions)."""

PARTITIONS = {"jira": "a JQL query", "trello": "a board", "asana": "a project",
              "salesforce": "an SOQL query", "pipedrive": "the deal list"}  # fmt: skip


def _breakdown(w: World, kind: str, start: int) -> dict[str, int]:
    log = w.tools[kind].emulator.controls.log[start:]
    out: Counter[str] = Counter()
    for e in log:
        parts = [p for p in e.path.split("/") if p]
        # Generalise ids (digits, hex, Jira keys) so calls of one kind fall together.
        shape = "/".join(
            "{id}" if any(c.isdigit() for c in p) and p not in ("v2", "v3", "v59.0", "1.0") else p
            for p in parts
        )
        out[f"{e.method} /{shape}"] += 1
    return dict(out.most_common())


def measure(kind: str, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    tool = seed_tool(kind, n)
    out: dict[str, Any] = {"kind": kind, "records": n, "seed_seconds": time.perf_counter() - t0}
    try:
        with world({kind: tool}) as w:
            out["setup"] = w.requests(kind)
            engine = w.rt.engine

            def phase(label: str, **run: Any) -> dict[str, Any]:
                start = w.requests(kind)
                t = time.perf_counter()
                report = engine.run(**run)
                seconds = time.perf_counter() - t
                r = report.connectors[kind]
                if r.status != "ok":
                    raise RuntimeError(f"{kind} {label}: {r.status} {r.error}")
                res = {
                    "requests": w.requests(kind) - start,
                    "seconds": seconds,
                    "counts": dict(r.counts),
                    "by_call": _breakdown(w, kind, start),
                }
                out[label] = res
                return res

            phase("full", push_to=[])
            phase("incremental_0", push_to=[])
            changed = max(1, n // 100)
            for i, ref in enumerate(tool.refs[:changed]):
                tool.edit(ref, EDITS[kind](i))  # type: ignore[misc]
            phase("incremental_1pct", push_to=[])
            out["changed"] = changed
            # Rename K projects in the hub; the next run pushes them.
            store = w.rt.store
            links = store.links_for_connector(kind)[:changed]
            got = store.get_projects([lk.project_id for lk in links])
            for data in got.values():
                data["name"] = f"{data['name']} (renamed)"
            store.put_projects(got.values())
            res = phase("push", only=[], push_to=[kind])  # no pull: the push alone
            out["pushed"] = res["counts"].get("pushed", 0)
    finally:
        tool.emulator.stop()
    page = PAGE[kind]
    out["page_size"] = page
    out["target_full"] = math.ceil(n / page)
    out["target_incremental_1pct"] = math.ceil(out["changed"] / page) + 1
    return out

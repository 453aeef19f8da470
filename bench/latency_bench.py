"""Wall time of a sync cycle over every connector with injected latency, against each alone.

All five emulators are seeded with M projects each and synced once (no latency). Then every
emulator answers each request 50 ms late (``Controls.delay``), and the engine runs a census
(``full=True``: every page is read again, every record planned) and an incremental cycle, of
each connector alone and of all five together. Connectors pull concurrently (one thread each)
and pages are planned and committed by one thread; the target is all five within 1.2 x of the
slowest alone. Each cycle is run several times (3 censuses, 7 incremental cycles) and the median
is reported: an incremental cycle is a single request of 50 ms here, so one scheduling hiccup
on a shared machine would otherwise be most of the figure.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from typing import Any

from bench.tools import KINDS, seed_tool, world

LATENCY = 0.05
REPEATS = {"census": 3, "incremental": 7}


def measure(m: int, latency: float = LATENCY) -> dict[str, Any]:
    out: dict[str, Any] = {"records_per_tool": m, "latency_ms": latency * 1000}
    with ExitStack() as stack:
        tools = {}
        for kind in KINDS:
            tool = seed_tool(kind, m)
            stack.callback(tool.emulator.stop)
            tools[kind] = tool
        w = stack.enter_context(world(tools))
        first = w.rt.engine.run()
        assert first.ok, {n: r.error for n, r in first.connectors.items()}
        for tool in tools.values():
            tool.emulator.controls.delay(latency)
        for mode, full in (("census", True), ("incremental", False)):
            alone: dict[str, dict[str, float]] = {}
            for kind in KINDS:
                times, requests = [], 0
                for _ in range(REPEATS[mode]):
                    start = w.requests(kind)
                    t0 = time.perf_counter()
                    report = w.rt.engine.run([kind], full=full)
                    times.append(time.perf_counter() - t0)
                    requests = w.requests(kind) - start
                    assert report.ok, report.connectors[kind].error
                alone[kind] = {"seconds": statistics.median(times), "requests": requests}
            times, requests = [], 0
            for _ in range(REPEATS[mode]):
                before = w.counts()
                t0 = time.perf_counter()
                report = w.rt.engine.run(full=full)
                times.append(time.perf_counter() - t0)
                assert report.ok, {n: r.error for n, r in report.connectors.items()}
                after = w.counts()
                requests = sum(after[k] - before[k] for k in KINDS)
            together = statistics.median(times)
            slowest = max(alone, key=lambda k: alone[k]["seconds"])
            out[mode] = {
                "alone": alone,
                "all_seconds": together,
                "all_requests": requests,
                "repeats": REPEATS[mode],
                "slowest": slowest,
                "ratio": together / alone[slowest]["seconds"],
                "sum_alone": sum(a["seconds"] for a in alone.values()),
            }
    return out

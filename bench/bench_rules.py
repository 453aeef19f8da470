"""Default-pack evaluations per second over generated projects with realistic event logs.

    .venv/bin/python bench/bench_rules.py                 # 10,000 and 100,000 projects
    .venv/bin/python bench/bench_rules.py --counts 2000   # a quick look

Projects come from bridge.demo_data.generate(); each gets a synthetic event log: its walk
through the stages (now and then skipping or going back), people's edits (amount, close date
pushed out, next steps, risks) and the bridge's own writes (meaningful=False). Evaluation reads
the canonical JSON form, as a sweep over the store does. One core, one process; the figure is
printed, never asserted (timings belong in no test). Evaluations per second of CPU time are
printed too: on a shared machine the wall-clock figure also measures the neighbours.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.demo_data import DemoOptions, generate
from bridge.model import DEFAULT_STAGES
from bridge.rules import Calendar, load_rules
from bridge.store.store import Event

STAGES = [s.key for s in DEFAULT_STAGES]


def synthetic_events(p: dict[str, Any], rnd: random.Random, now: datetime) -> list[Event]:
    """A plausible event log for one project (canonical JSON), oldest first."""
    pid = p["id"]
    created = datetime.fromisoformat(p["created_at"])
    entered = datetime.fromisoformat(p["stage_entered_at"])
    last = datetime.fromisoformat(p["last_meaningful_update_at"])
    who = (p.get("owner") or {}).get("email")
    out: list[Event] = []

    def ev(at: datetime, field: str, old: Any, new: Any, meaningful: bool = True) -> None:
        out.append(
            Event(
                project_id=pid,
                at=min(at, now),
                field=field,
                old=old,
                new=new,
                source="crm" if meaningful else "hub",
                meaningful=meaningful,
                actor=who if meaningful else "salesbridge",
            )
        )

    target = STAGES.index(p["stage"])
    span = max((entered - created).total_seconds(), 3600.0)
    cur = 0
    step = 1
    while cur < target:
        nxt = min(cur + (2 if rnd.random() < 0.05 else 1), target)
        at = created + timedelta(seconds=span * step / (target + 1))
        ev(at, "stage", STAGES[cur], STAGES[nxt])
        if rnd.random() < 0.04 and nxt > 1:  # a step back and forth again
            ev(at + timedelta(hours=2), "stage", STAGES[nxt], STAGES[nxt - 1])
            ev(at + timedelta(hours=5), "stage", STAGES[nxt - 1], STAGES[nxt])
        cur, step = nxt, step + 1
    if target:
        ev(entered, "stage", STAGES[target - 1], STAGES[target])
    amount = (p.get("amount") or {}).get("amount", "0")
    for _ in range(rnd.randint(2, 8)):  # people's edits between creation and the last update
        at = created + (last - created) * rnd.random()
        kind = rnd.random()
        if kind < 0.3:
            ev(at, "next_steps", [], [{"what": "call"}])
        elif kind < 0.5:
            new_amount = str(int(float(amount) * rnd.uniform(0.7, 1.3)))
            ev(at, "amount", {"amount": amount, "currency": "USD"}, {"amount": new_amount})
            amount = new_amount
        elif kind < 0.7:
            d = date.fromisoformat(p["expected_close_date"])
            ev(at, "expected_close_date", str(d - timedelta(days=30)), str(d))
        else:
            ev(at, "description", "", "notes")
    ev(last, "actions", [], [{"what": "visit"}])
    for _ in range(rnd.randint(1, 6)):  # the bridge's own writes: never meaningful
        ev(last + timedelta(hours=rnd.randint(1, 400)), "custom.sync_note", None, "x", False)
    out.sort(key=lambda e: e.at)
    return out


def bench(count: int, seed: int = 7) -> dict[str, float]:
    opts = DemoOptions(count=count, seed=seed)
    now = opts.now
    rnd = random.Random(seed)  # noqa: S311 - benchmark data
    t0 = time.perf_counter()
    projects = [p.to_json() for p in generate(opts)]
    logs = [synthetic_events(p, rnd, now) for p in projects]
    setup = time.perf_counter() - t0
    calendars = {
        "east": Calendar.of("Asia/Shanghai", [date(2026, 10, 1), date(2026, 10, 2)]),
        "enterprise": Calendar.of("Europe/Berlin", [date(2026, 12, 25)]),
    }
    pack = load_rules()
    fails = 0
    t1, c1 = time.perf_counter(), time.process_time()
    for p, events in zip(projects, logs, strict=True):
        result = pack.evaluate(p, events, now, calendars[p["team"]])
        fails += len(result.violations)
    elapsed, cpu = time.perf_counter() - t1, time.process_time() - c1
    return {
        "cpu_s": cpu,
        "per_cpu_second": count / cpu,
        "projects": count,
        "events": sum(len(e) for e in logs),
        "setup_s": setup,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "violations": fails,
        "rules": len(pack.rules),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args()
    for n in args.counts:
        r = bench(n)
        print(
            f"{r['projects']:>7,} projects, {r['events']:>9,} events, {r['rules']:.0f} rules: "
            f"{r['per_second']:>9,.0f} evaluations/s ({r['seconds']:.2f} s wall; "
            f"{r['per_cpu_second']:,.0f}/s of CPU time; "
            f"{r['violations']:,.0f} violations; setup {r['setup_s']:.1f} s)"
        )


if __name__ == "__main__":
    main()

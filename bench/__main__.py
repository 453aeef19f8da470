"""Run every benchmark and write BENCHMARKS.md.

    .venv/bin/python -m bench            # the sizes of issue #12 (about 6 min on 2 cores)
    .venv/bin/python -m bench --quick    # smaller sizes (about 1 min)
    .venv/bin/python -m bench --only requests rules --out /tmp/b.md

Timings are printed and written, never asserted; request counts are exact (and are unit tests
in tests/test_request_counts.py). Raw figures go to bench/results.json beside the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = {
    "full": {
        "requests": [1_000, 10_000],
        "latency": 500,
        "throughput": 10_000,
        "rss": [1_000, 10_000, 100_000],
        "rules": [10_000, 100_000],
        "digest": 10_000,
    },
    "quick": {
        "requests": [200, 1_000],
        "latency": 200,
        "throughput": 2_000,
        "rss": [1_000, 5_000, 20_000],
        "rules": [2_000],
        "digest": 1_000,
    },
}
ALL = ("requests", "latency", "throughput", "rss", "rules", "digest")
PG_URL = os.environ.get(
    "SALESBRIDGE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the benchmarks and write BENCHMARKS.md.")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 1 min)")
    ap.add_argument("--only", nargs="+", choices=ALL, default=list(ALL))
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL figures")
    args = ap.parse_args()

    from bench import report

    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    results: dict[str, Any] = {"mode": mode, "machine": report.machine(), "sizes": sizes}
    started = time.perf_counter()

    def step(name: str, fn: Any) -> None:
        if name not in args.only:
            return
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        results[name] = fn()
        results.setdefault("seconds", {})[name] = time.perf_counter() - t0
        partial = REPO / "bench" / "results.partial.json"
        partial.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    def requests() -> Any:
        from bench.requests_bench import measure
        from bench.tools import KINDS

        out = []
        for n in sizes["requests"]:
            for kind in KINDS:
                try:
                    r = measure(kind, n)
                except Exception as exc:  # recorded and reported: the others still run
                    print(f"  {kind:<10} N={n:>6}: failed: {exc}", flush=True)
                    out.append({"kind": kind, "records": n, "error": str(exc)[:300]})
                    continue
                print(
                    f"  {kind:<10} N={n:>6}: full {r['full']['requests']}, "
                    f"incremental 0 {r['incremental_0']['requests']}, "
                    f"1 % {r['incremental_1pct']['requests']}, push {r['push']['requests']}",
                    flush=True,
                )
                out.append(r)
        return out

    def latency() -> Any:
        from bench.latency_bench import measure

        return measure(sizes["latency"])

    def throughput() -> Any:
        from bench.engine import throughput as run

        out = {"sqlite": run(sizes["throughput"])}
        if not args.no_postgres:
            try:
                out["postgresql"] = run(sizes["throughput"], PG_URL)
            except Exception as exc:
                out["postgresql_error"] = f"{type(exc).__name__}: {exc}"
        return out

    def rss() -> Any:
        from bench.engine import rss_in_subprocess

        out = []
        for n in sizes["rss"]:
            r = rss_in_subprocess(n)
            print(f"  {n:>7} records: peak {r['peak_mb']:.0f} MB, {r['full_seconds']:.1f} s")
            out.append(r)
        return out

    def rules() -> Any:
        from bench.bench_rules import bench

        return [bench(n) for n in sizes["rules"]]

    def digest() -> Any:
        from bench.digest_bench import measure

        return measure(sizes["digest"])

    for name, fn in (
        ("requests", requests),
        ("throughput", throughput),
        ("rss", rss),
        ("rules", rules),
        ("digest", digest),
        ("latency", latency),
    ):
        step(name, fn)
    results["total_seconds"] = time.perf_counter() - started
    raw = (
        args.out.with_name("bench-results.json")
        if args.out.name != "BENCHMARKS.md"
        else (REPO / "bench" / "results.json")
    )
    raw.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    args.out.write_text(report.render(results), encoding="utf-8")
    (REPO / "bench" / "results.partial.json").unlink(missing_ok=True)
    print(f"[bench] wrote {args.out} and {raw} in {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()

"""Digest rendering: N projects in the store, 20 recipients, each rendered in both languages.

The store holds generated projects (:mod:`bridge.demo_data`) with the violations of a real sweep
of the default rule pack (timed apart: it is the rules' cost, not the digest's). The recipients
are the demo's teams seen by 20 people: directors of the whole sales org, team managers and
masked-amount ops readers, half of them reading Chinese by default. Every recipient's digest is
built and rendered (HTML, text, Markdown) in English and in Chinese: 40 renders, all measured,
from one digest run (:func:`bridge.digest.digest_run`) as ``send_digests`` does. The first
render pays for what the run shares (reading the store, evaluating the pack, the KPI shares);
the figure is the whole, never scaled from a sample.
"""

from __future__ import annotations

import time
from typing import Any

from bench.engine import store_at
from bench.tools import NOW, projects
from bridge.config import load_config
from bridge.demo import TEAMS
from bridge.digest import digest_run, render_digest
from bridge.rules import load_rules
from bridge.rules.sweep import calendars_from_config, managers_from_config, sweep

RECIPIENTS = 20


def config_data() -> dict[str, Any]:
    teams: dict[str, Any] = {"sales": {"label": "Sales", "label_zh": "销售部"}}
    for key, (label, label_zh, members) in TEAMS.items():
        teams[key] = {
            "label": label,
            "label_zh": label_zh,
            "parent": "sales",
            "members": [f"{m}@example.com" for m in members],
        }
    scopes = [["sales"], ["east"], ["enterprise"], ["east", "enterprise"]]
    recipients = {
        f"r{i:02d}": {
            "name": f"Reader {i}",
            "email": f"reader{i}@example.com",
            "language": "zh-CN" if i % 2 else "en",
            "teams": scopes[i % len(scopes)],
            "mask_amounts": i % 5 == 4,
            "role": "sales_ops" if i % 5 == 4 else "manager",
        }
        for i in range(RECIPIENTS)
    }
    smtp = {"host": "127.0.0.1", "port": 25, "security": "none", "sender": "sb@example.com"}
    return {
        "timezone": "Asia/Shanghai",
        "teams": teams,
        "recipients": recipients,
        "smtp": smtp,
    }


def measure(n: int) -> dict[str, Any]:
    """Render all 20 recipients in both languages from one run and time the whole."""
    loaded = load_config(None, data=config_data())
    out: dict[str, Any] = {"projects": n, "recipients": RECIPIENTS}
    with store_at(None) as (store, _):
        store.put_projects(projects(n))
        t0 = time.perf_counter()
        report = sweep(
            store,
            load_rules(),
            now=NOW,
            calendars=calendars_from_config(loaded.config),
            managers=managers_from_config(loaded.config),
        )
        out["sweep_seconds"] = time.perf_counter() - t0
        out["violations"] = len(report.failing)
        sizes = 0
        renders = 0
        t0 = time.perf_counter()
        run = digest_run(store, loaded, NOW)
        for name in loaded.config.recipients:
            for lang in ("en", "zh-CN"):
                html, _text, _md = render_digest(store, loaded, name, lang, NOW, run=run)
                sizes += len(html)
                renders += 1
                if renders == 1:
                    out["first_render_seconds"] = time.perf_counter() - t0
        out["measured_seconds"] = out["seconds"] = time.perf_counter() - t0
        out["renders"] = renders
        out["html_kb_avg"] = sizes / 1024 / renders
    return out


if __name__ == "__main__":
    import json
    import sys

    for count in [int(a) for a in sys.argv[1:]] or [1_000, 10_000]:
        print(json.dumps(measure(count)), flush=True)

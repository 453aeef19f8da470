"""Digest rendering: N projects in the store, 20 recipients, each rendered in both languages.

The store holds generated projects (:mod:`bridge.demo_data`) with the violations of a real sweep
of the default rule pack (timed apart: it is the rules' cost, not the digest's). The recipients
are the demo's teams seen by 20 people: directors of the whole sales org, team managers and
masked-amount ops readers, half of them reading Chinese by default. Every recipient's digest is
built and rendered (HTML, text, Markdown) in English and in Chinese: 40 renders. Renders are
independent, so a run may render a sample of the recipients (every kind of scope is among the
first four) and scale the time to all 20; the report says which.
"""

from __future__ import annotations

import time
from typing import Any

from bench.engine import store_at
from bench.tools import NOW, projects
from bridge.config import load_config
from bridge.demo import TEAMS
from bridge.digest import render_digest
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


def measure(n: int, sample: int = RECIPIENTS) -> dict[str, Any]:
    """Render ``sample`` of the 20 recipients (both languages each) and scale to all 20."""
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
        t0 = time.perf_counter()
        for name in list(loaded.config.recipients)[:sample]:
            for lang in ("en", "zh-CN"):
                html, _text, _md = render_digest(store, loaded, name, lang, NOW)
                sizes += len(html)
        out["measured_seconds"] = time.perf_counter() - t0
        out["renders"] = sample * 2
        out["seconds"] = out["measured_seconds"] * RECIPIENTS / sample
        out["html_kb_avg"] = sizes / 1024 / out["renders"]
    return out

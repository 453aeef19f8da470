"""``salesbridge demo``: the main job on embedded defaults, with no accounts.

It writes a self-contained workspace (config, mapping, SQLite store, file-backed tools), seeds a
CRM-like tool with generated projects, runs a full sync that creates them on a second tool,
makes a few human edits on both sides (one of them a conflict) and syncs again, so every part
of the engine is visible. The workspace stays behind for the user to explore with the other
commands (`salesbridge status --config <out>/salesbridge.toml`, `conflicts list`, `history`).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bridge.cli import app, console
from bridge.config import load_config
from bridge.demo_data import DemoOptions, generate
from bridge.errors import UserError
from bridge.model import get_path
from bridge.runtime import Runtime, open_runtime
from bridge.sync import SyncReport

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"

STAGE_NAMES = {
    "lead": "Backlog",
    "qualification": "Qualifying",
    "proposal": "Proposal",
    "negotiation": "Negotiation",
    "signing": "Signed",
    "delivery": "Delivery",
    "proposal_review": "Proposal review",  # a second status that maps to proposal
}

# The stand-in tools' schema: what `discover()` reports, as a real tool would.
TOOL_FIELDS = {
    "Title": "text",
    "Project number": "text",
    "Customer": "text",
    "Customer ID": "text",
    "Owner": "user",
    "Outcome": "option",
    "Priority": "option",
    "Amount": "number",
    "Currency": "text",
    "Probability": "number",
    "Close date": "date",
    "Stage entered": "datetime",
    "Notes": "text",
    "Stakeholders": "json",
    "Region": "option",
    "Labels": "labels",
    "Created": "datetime",
    "Salesbridge ID": "text",
}

CONFIG = """\
# Written by `salesbridge demo`. Two stand-in tools (file-backed memory connectors):
# "crm" is seeded with generated opportunities, "board" receives them through the sync.
timezone = "Asia/Shanghai"

[store]
url = "sqlite:///salesbridge.db"

[sync]
conflict_policy = "newest_wins"

[connectors.crm]
kind = "memory"
mapping = "mappings/memory.toml"
path = "tools/crm.json"
page_size = 100
stage_values = {stages}
fields = {fields}

[connectors.board]
kind = "memory"
mapping = "mappings/memory.toml"
path = "tools/board.json"
page_size = 100
stage_values = {stages}
fields = {fields}
"""


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Workspace folder to write.")] = Path(
        "salesbridge-demo"
    ),
    count: Annotated[int, typer.Option("--count", "-n", help="Projects to generate.")] = 240,
) -> None:
    """Run the whole job on generated data: no accounts, no setup."""
    started = time.monotonic()
    if not (MAPPINGS / "memory.toml").is_file():
        raise UserError(f"mapping files not found at {MAPPINGS}; run from a source checkout")
    if out.exists():
        shutil.rmtree(out)
    (out / "tools").mkdir(parents=True)
    shutil.copytree(MAPPINGS, out / "mappings")
    stages = "[" + ", ".join(f'"{v}"' for v in STAGE_NAMES.values()) + "]"
    fields = "{ " + ", ".join(f'"{k}" = "{v}"' for k, v in TOOL_FIELDS.items()) + " }"
    (out / "salesbridge.toml").write_text(
        CONFIG.format(stages=stages, fields=fields), encoding="utf-8"
    )
    loaded = load_config(out / "salesbridge.toml")
    say = console()
    say.print(f"[bold]salesbridge demo[/bold]: workspace {out}/")

    with open_runtime(loaded) as rt:
        from connectors.memory import MemoryConnector

        crm, board = rt.connectors["crm"], rt.connectors["board"]
        assert isinstance(crm, MemoryConnector) and isinstance(board, MemoryConnector)
        spec = rt.engine.mappings["crm"]
        projects = list(generate(DemoOptions(count=count)))
        for p in projects:
            data = p.to_json()
            values = {path: get_path(data, path) for path in spec.pushed_paths}
            remote = spec.to_remote({k: v for k, v in values.items() if v is not None})
            crm.backend.add(remote, actor=p.owner.email if p.owner else None)
        say.print(f"seeded the CRM with {len(projects)} opportunities")

        first = rt.engine.run()
        _summary("First sync: CRM -> hub -> board", first)

        # People work in their tools between two syncs.
        crm_refs = sorted(crm.backend.records())[:6]
        board_by_stamp = {e["stamp"]: ref for ref, e in board.backend.records().items()}
        crm.backend.edit(crm_refs[0], {"status": "Negotiation"}, actor="li.wei@example.com")
        crm.backend.edit(crm_refs[1], {"Amount": 123456}, actor="zhang.min@example.com")
        stamp = _project_of(rt, "crm", crm_refs[2])
        board.backend.edit(board_by_stamp[stamp], {"Priority": "Urgent"}, actor="pm@example.com")
        # A conflict: both sides change the close date differently.
        both = _project_of(rt, "crm", crm_refs[3])
        crm.backend.edit(crm_refs[3], {"Close date": "2027-01-15"}, actor="anna@example.com")
        board.backend.edit(
            board_by_stamp[both], {"Close date": "2027-02-28"}, actor="pm@example.com"
        )
        second = rt.engine.run()
        _summary("Second sync: edits on both sides", second)

        by_stage = Counter(p["stage"] for p in rt.store.list_projects())
        table = Table("stage", "projects", title="Projects in the hub by stage")
        for stage in loaded.config.lifecycle.stages:
            table.add_row(f"{stage.label_en} / {stage.label_zh}", str(by_stage.get(stage.key, 0)))
        say.print(table)
        conflicts = rt.store.list_conflicts(False)
    say.print(
        f"{len(conflicts)} conflict(s) recorded (see `salesbridge conflicts list --all "
        f"--config {out}/salesbridge.toml`)."
    )
    say.print(f"Done in {time.monotonic() - started:.1f} s. Store: {out}/salesbridge.db")


def _project_of(rt: Runtime, connector: str, ref: str) -> str:
    link = rt.store.get_link(connector, ref)
    assert link is not None
    return link.project_id


def _summary(title: str, report: SyncReport) -> None:
    table = Table(
        "connector",
        "pulled",
        "created",
        "updated",
        "conflicts",
        "quarantined",
        "pushed",
        "created in tool",
        title=title,
    )
    for n, r in report.connectors.items():
        c = r.counts
        table.add_row(
            n,
            *(
                str(c.get(k, 0))
                for k in (
                    "pulled",
                    "created",
                    "updated",
                    "conflicts",
                    "quarantined",
                    "pushed",
                    "push_created",
                )
            ),
        )
    console().print(table)
    for n, r in report.connectors.items():
        if r.error:
            console().print(f"[red]{n}: {r.status}[/red] {r.error}")

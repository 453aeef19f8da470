"""The tracking-table export: opened with openpyxl (and csv), columns and values checked."""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from typer.testing import CliRunner

from bridge.digest import load_pack
from bridge.errors import UserError
from bridge.export import export
from bridge.store import Store
from tests.digest_world import loaded_config, seed

HEADER_EN = [
    "Project",
    "Code",
    "Customer",
    "Owner",
    "Team",
    "Stage",
    "Status",
    "Tasks done: Lead & first contact",
    "Tasks done: Needs confirmation & qualification",
    "Tasks done: Proposal",
    "Tasks done: Negotiation & contract review",
    "Tasks done: Signing & kickoff",
    "Tasks done: Delivery & payment collection",
    "Decision makers",
    "Influencers",
    "Customer needs",
    "Competitors",
    "Actions taken",
    "Next steps",
    "Risks and mitigations",
    "Expected close date",
    "Amount",
    "Currency",
    "Probability %",
    "Last update",
    "Open violations",
    "Violations",
]


@pytest.fixture
def seeded(tmp_path: Path) -> Any:
    loaded = loaded_config()
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    seed(store, loaded)
    yield store, loaded
    store.close()


def rows_by_code(ws: Any) -> dict[str, dict[str, Any]]:
    header = [c.value for c in ws[1]]
    return {
        row[1]: dict(zip(header, row, strict=True))
        for row in ws.iter_rows(min_row=2, values_only=True)
    }


def test_xlsx_columns_values_and_layout(seeded: Any, tmp_path: Path) -> None:
    store, loaded = seeded
    out = tmp_path / "p.xlsx"
    assert export(store, loaded, fmt="xlsx", out=out, pack=load_pack(loaded)) == 4
    wb = openpyxl.load_workbook(out)
    try:
        ws = wb.active
        assert [c.value for c in ws[1]] == HEADER_EN
        assert ws.freeze_panes == "B2"
        assert ws.auto_filter.ref == "A1:AA5"
        assert ws.column_dimensions["A"].width == 36
        rows = rows_by_code(ws)
        assert set(rows) == {"EAST-001", "SH-002", "WEST-003", "WEST-004"}
        e = rows["EAST-001"]
        assert e["Project"] == "Harbour Crane Upgrade"
        assert e["Customer"] == "Ningbo Port Authority"
        assert e["Owner"] == "Wang Fang"
        assert e["Team"] == "east"
        assert e["Stage"] == "Proposal"
        assert e["Status"] == "open"
        assert e["Tasks done: Needs confirmation & qualification"] == "1/1"
        assert e["Tasks done: Proposal"] == "1/2"
        assert e["Tasks done: Lead & first contact"] is None
        assert e["Decision makers"] == "Chen Zong (CEO)"
        assert e["Influencers"] == "Liu Gong (CTO)"
        assert e["Customer needs"] == "Faster crane scheduling"
        assert e["Competitors"] == "SAP"
        assert e["Actions taken"] == "2026-01-21 Workshop held"
        assert e["Next steps"] == "Send the quote · Wang Fang · 2026-03-09"
        assert e["Risks and mitigations"] == "[high] Budget freeze → Phase it"
        # real dates and numbers, not text
        assert e["Expected close date"] == datetime(2026, 2, 20)
        assert ws.cell(row=2, column=21).number_format == "yyyy-mm-dd"
        assert e["Amount"] == 1234567 and e["Currency"] == "USD"
        assert e["Probability %"] == 40
        # 40 days before 2026-03-02 01:00 UTC, shown in Shanghai time
        assert e["Last update"] == datetime(2026, 1, 21, 9, 0)
        opened = [v for v in store.list_violations() if v.project_id == "sb-east1"]
        assert e["Open violations"] == len(opened) > 0
        assert "Updated within its cadence" in e["Violations"]
    finally:
        wb.close()


def test_team_filter_includes_nested_teams_and_zh_headers(seeded: Any, tmp_path: Path) -> None:
    store, loaded = seeded
    out = tmp_path / "east.xlsx"
    assert export(store, loaded, fmt="xlsx", out=out, team="east", lang="zh-CN") == 2
    wb = openpyxl.load_workbook(out)
    try:
        ws = wb.active
        assert ws["A1"].value == "项目名称" and ws["F1"].value == "当前阶段"
        rows = rows_by_code(ws)
        assert set(rows) == {"EAST-001", "SH-002"}
        assert rows["SH-002"]["当前阶段"] == "商务谈判与合同评审"
        assert rows["SH-002"]["状态"] == "进行中"
    finally:
        wb.close()
    with pytest.raises(UserError, match="'nowhere' is not a team"):
        export(store, loaded, fmt="csv", out=tmp_path / "x.csv", team="nowhere")


def test_csv_is_utf8_with_bom(seeded: Any, tmp_path: Path) -> None:
    store, loaded = seeded
    out = tmp_path / "p.csv"
    export(store, loaded, fmt="csv", out=out, team="west", lang="zh-CN")
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["项目编号"] for r in rows} == {"WEST-003", "WEST-004"}
    west3 = next(r for r in rows if r["项目编号"] == "WEST-003")
    assert west3["预计成交日期"] == date(2026, 6, 30).isoformat()
    assert west3["金额"] == "987654"
    assert west3["当前阶段"] == "需求确认与机会评估"


@pytest.mark.usefixtures("seeded")
def test_export_command(tmp_path: Path) -> None:
    import bridge.cli_digest  # noqa: F401  (registers the command)
    from bridge.cli import app

    cfg = tmp_path / "salesbridge.toml"
    cfg.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "state.db"}"\n'
        '[teams.east]\n[teams.shanghai]\nparent = "east"\n',
        encoding="utf-8",
    )
    out = tmp_path / "cli.xlsx"
    r = CliRunner().invoke(
        app, ["export", "--format", "xlsx", "--team", "east", "-c", str(cfg), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    wb = openpyxl.load_workbook(out)
    try:
        assert set(rows_by_code(wb.active)) == {"EAST-001", "SH-002"}
    finally:
        wb.close()

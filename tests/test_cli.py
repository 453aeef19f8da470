"""The command line as a person or a script meets it: real subprocesses, real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TOOL_FIELDS = (
    '{ "Title" = "text", "Project number" = "text", "Customer" = "text", '
    '"Customer ID" = "text", "Owner" = "user", "Outcome" = "option", "Priority" = "option", '
    '"Amount" = "number", "Currency" = "text", "Probability" = "number", '
    '"Close date" = "date", "Stage entered" = "datetime", "Notes" = "text", '
    '"Stakeholders" = "json", "Region" = "option", "Labels" = "labels", '
    '"Created" = "datetime", "Salesbridge ID" = "text" }'
)
STAGES = (
    '["Backlog", "Qualifying", "Proposal", "Proposal review", "Negotiation", "Signed", "Delivery"]'
)


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A config with one file-backed memory tool holding two records, one of them unmappable."""
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    (tmp_path / "salesbridge.toml").write_text(
        f"""
[connectors.crm]
kind = "memory"
path = "crm.json"
stage_values = {STAGES}
fields = {TOOL_FIELDS}
""",
        encoding="utf-8",
    )
    from connectors.memory import MemoryBackend

    backend = MemoryBackend(tmp_path / "crm.json")
    backend.add(
        {
            "Title": "Acme rollout",
            "Status": "Proposal",
            "Amount": 1200.5,
            "Currency": "EUR",
            "Outcome": "Open",
            "Priority": "High",
        }
    )
    backend.add({"Title": "Broken", "Status": "Nowhere", "Outcome": "Open"})
    return tmp_path


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for cmd in ("schema", "config", "db", "mappings", "sync", "status", "conflicts", "demo"):
        assert cmd in proc.stdout


def test_schema_prints_json_schema(tmp_path: Path) -> None:
    proc = cli("schema", cwd=tmp_path)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema["title"] == "SalesProject" and "stage" in schema["properties"]
    assert cli("schema", "--out", "s.json", cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


def test_connectors_json(tmp_path: Path) -> None:
    proc = cli("connectors", "--json", cwd=tmp_path)
    assert proc.returncode == 0
    kinds = {row["kind"] for row in json.loads(proc.stdout)}
    assert "memory" in kinds


def test_config_check_online_and_json(workspace: Path) -> None:
    proc = cli("config", "check", "--online", "--json", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    assert result["connectors"][0]["connector"] == "crm"


def test_db_upgrade_and_current(workspace: Path) -> None:
    assert cli("db", "upgrade", cwd=workspace).returncode == 0
    assert (workspace / "salesbridge.db").exists()
    proc = cli("db", "current", "--json", cwd=workspace)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["revision"]


def test_mappings_check_against_live_schema(workspace: Path) -> None:
    proc = cli("mappings", "check", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert "OK crm" in proc.stdout
    # The tool stops offering a status the mapping relies on: named precisely, exit 2.
    cfg = workspace / "salesbridge.toml"
    cfg.write_text(cfg.read_text().replace('"Proposal review", ', ""), encoding="utf-8")
    proc = cli("mappings", "check", cwd=workspace)
    assert proc.returncode == 2
    assert 'mappings/memory.toml: [fields.stage.values] "Proposal review" <-' in proc.stderr


def test_mappings_preview_side_by_side(workspace: Path) -> None:
    proc = cli("mappings", "preview", "crm", "--json", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    rows = {r["remote"]["Title"]: r for r in json.loads(proc.stdout)}
    good = rows["Acme rollout"]["canonical"]
    assert good["name"] == "Acme rollout"
    assert good["stage"] == "proposal"
    assert good["amount"] == {"amount": "1200.5", "currency": "EUR"}
    assert rows["Broken"]["canonical"] is None
    assert "Nowhere" in rows["Broken"]["error"]
    table = cli("mappings", "preview", "crm", "-n", "1", cwd=workspace)
    assert table.returncode == 0 and "canonical value" in table.stdout


def test_unknown_connector_is_input_error(workspace: Path) -> None:
    proc = cli("mappings", "preview", "jira", cwd=workspace)
    assert proc.returncode == 2
    assert "no connector named 'jira'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sync_status_history_quarantine_json(workspace: Path) -> None:
    dry = cli("sync", "--dry-run", "--json", cwd=workspace)
    assert dry.returncode == 2, dry.stderr  # changes pending
    planned = json.loads(dry.stdout)["writes"]
    assert any(w["action"] == "create_project" for w in planned)
    assert cli("sync", cwd=workspace).returncode == 0
    assert cli("sync", "--dry-run", cwd=workspace).returncode == 0  # nothing left to do
    status = json.loads(cli("status", "--json", cwd=workspace).stdout)
    assert status[0]["connector"] == "crm" and status[0]["linked"] == 1
    assert status[0]["quarantined"] == 1
    q = json.loads(cli("quarantine", "list", "--json", cwd=workspace).stdout)
    assert q[0]["reason"] and "Nowhere" in q[0]["reason"]
    import sqlite3

    with sqlite3.connect(workspace / "salesbridge.db") as db:
        (pid,) = db.execute("select project_id from links").fetchone()
    events = json.loads(cli("history", pid, "--json", cwd=workspace).stdout)
    assert {e["field"] for e in events} >= {"name", "stage", "amount"}
    assert cli("history", "sb-nope", cwd=workspace).returncode == 2

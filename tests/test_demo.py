"""``salesbridge demo``: what CI checks after running it from a clean install.

The demo runs once, in process, into a temporary workspace: every emulator gets projects, the
sync links them across tools, the rules find violations, the digest speaks both languages and
the tracking table has a row per project. ``--serve`` is checked as a subprocess.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
import requests

from bridge.demo import TOOLS, DemoResult, run_demo
from bridge.store import Store

REPO = Path(__file__).resolve().parent.parent
COUNT = 240


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoResult]:
    saved = dict(os.environ)
    try:
        yield run_demo(tmp_path_factory.mktemp("demo") / "salesbridge-demo", COUNT)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_every_tool_has_projects_and_some_cross_tools(result: DemoResult) -> None:
    assert set(result.linked) == set(TOOLS)
    assert all(n > 0 for n in result.linked.values()), result.linked
    assert result.projects >= 200
    # links beyond one per project: projects created in a second tool (Trello, Jira)
    assert sum(result.linked.values()) > result.projects
    for report in result.reports:
        assert report.ok, {n: r.error for n, r in report.connectors.items()}
    first = result.reports[0].connectors
    assert first["trello"].counts["push_created"] > 0
    assert first["jira"].counts["push_created"] > 0
    second = result.reports[1].connectors
    assert sum(r.counts["updated"] for r in second.values()) > 0  # people's edits arrived
    # The close date people changed differently in Pipedrive and on Trello is a recorded
    # conflict (whichever tool's page the engine merged first, it is counted under the other).
    with Store.open(f"sqlite:///{result.out / 'salesbridge.db'}") as store:
        fields = {c.field for c in store.list_conflicts(False)}
    assert "expected_close_date" in fields, (
        fields,
        {n: dict(r.counts) for n, r in second.items()},
    )


def test_rules_find_violations(result: DemoResult) -> None:
    assert sum(result.violations.values()) > 0
    assert "cadence" in " ".join(result.violations)  # some projects are stale


def test_outputs_exist_and_speak_both_languages(result: DemoResult) -> None:
    out = result.out
    assert (out / "salesbridge.toml").is_file()
    assert (out / "salesbridge.db").stat().st_size > 0
    digest = (out / "digest.html").read_text(encoding="utf-8")
    assert result.files == [out / "digest.html", out / "tracker.xlsx"]
    assert "Sales project digest" in digest and "销售项目简报" in digest
    assert "Compliance" in digest and "合规情况" in digest
    # stage labels in both languages
    assert re.search(r"Proposal", digest) and "方案制定与提交" in digest
    book = openpyxl.load_workbook(out / "tracker.xlsx", read_only=True)
    try:
        sheet = book.active
        assert sheet is not None
        rows = list(sheet.iter_rows(values_only=True))
    finally:
        book.close()
    assert rows[0][0] == "Project"
    assert len(rows) - 1 == result.projects >= 200


def test_the_config_holds_no_secret(result: DemoResult) -> None:
    from bridge.demo import ENV

    text = (result.out / "salesbridge.toml").read_text(encoding="utf-8")
    assert "env:SALESBRIDGE_DEMO_JIRA_TOKEN" in text
    for secret in ENV.values():
        assert secret not in text


def test_demo_is_quick(result: DemoResult) -> None:
    assert result.seconds < 120  # the target is 60 s on a 2-core machine; CI has slack


def test_serve_keeps_the_emulators_up_and_runs_the_service(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "demo",
            "--out",
            str(tmp_path / "ws"),
            "--count",
            "30",
            "--serve",
            "--port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        url, seen = None, []
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if m := re.search(r"Serving: (http://127\.0\.0\.1:\d+)/healthz", line):
                url = m.group(1)
        assert url is not None, "".join(seen)
        r = requests.get(f"{url}/healthz", timeout=10)
        assert r.status_code in (200, 503), r.text
        assert "pipedrive" in r.text
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

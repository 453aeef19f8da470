"""``salesbridge emulate KIND``: every emulator seeded with generated data or a real export,
reachable with the credentials it prints, and served in the foreground until Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.cli_emulate import KINDS, Emulated, build
from bridge.demo import ENV, JIRA_BOT, SF_CLIENT, SF_USER
from bridge.errors import UserError

REPO = Path(__file__).resolve().parent.parent
# The CLI with the emulate command registered (bridge.cli imports it once the lead adds it).
CLI = (
    "import sys; from bridge import cli_emulate; from bridge.cli import main; "
    "sys.argv = ['salesbridge', *sys.argv[1:]]; main()"
)


def served(emulated: Emulated) -> Iterator[str]:
    emulated.emulator.start()
    try:
        yield emulated.emulator.base_url
    finally:
        emulated.emulator.stop()


def login_and_count(kind: str, url: str, extra: dict[str, Any]) -> int:
    """Log in with the printed credentials and count the records the emulator serves."""
    if kind == "jira":
        r = requests.get(
            f"{url}/rest/api/3/search/jql",
            params={"jql": "project = SALES", "maxResults": "100"},
            auth=(JIRA_BOT, ENV["SALESBRIDGE_DEMO_JIRA_TOKEN"]),
            timeout=10,
        )
        r.raise_for_status()
        return len(r.json()["issues"])
    if kind == "trello":
        key, token = ENV["SALESBRIDGE_DEMO_TRELLO_KEY"], ENV["SALESBRIDGE_DEMO_TRELLO_TOKEN"]
        r = requests.get(
            f"{url}/1/boards/{extra['boards'][0]}/cards",
            params={"key": key, "token": token},
            timeout=10,
        )
        r.raise_for_status()
        return len(r.json())
    if kind == "asana":
        r = requests.get(
            f"{url}/api/1.0/projects/{extra['project']}/tasks",
            headers={"Authorization": f"Bearer {ENV['SALESBRIDGE_DEMO_ASANA_TOKEN']}"},
            timeout=10,
        )
        r.raise_for_status()
        return len(r.json()["data"])
    if kind == "salesforce":
        r = requests.post(
            f"{url}/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": SF_CLIENT,
                "client_secret": ENV["SALESBRIDGE_DEMO_SF_SECRET"],
                "username": SF_USER,
                "password": ENV["SALESBRIDGE_DEMO_SF_PASSWORD"] + ENV["SALESBRIDGE_DEMO_SF_TOKEN"],
            },
            timeout=10,
        )
        r.raise_for_status()
        token = r.json()["access_token"]
        r = requests.get(
            f"{url}/services/data/v59.0/query",
            params={"q": "SELECT Id FROM Opportunity"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        r.raise_for_status()
        return int(r.json()["totalSize"])
    r = requests.get(
        f"{url}/api/v2/deals",
        params={"api_token": ENV["SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN"], "limit": "100"},
        timeout=10,
    )
    r.raise_for_status()
    return len(r.json()["data"])


@pytest.mark.parametrize("kind", KINDS)
def test_generated_data_is_served_to_the_printed_credentials(kind: str) -> None:
    from bridge import demo

    emulated = build(kind, None, 5)
    assert emulated.holds == "5 generated sales projects"
    for url in served(emulated):
        lines = emulated.credentials(url)
        assert any(line.startswith("try: curl") and url in line for line in lines), lines
        # what the demo's builder knows of the tool (board, project gids)
        settings: dict[str, Any] = {}
        for line in lines:
            if m := re.search(r"board id\(s\): (\w+)", line):
                settings["boards"] = [m.group(1)]
            if m := re.search(r"pipeline project (\d+)", line):
                settings["project"] = m.group(1)
        assert login_and_count(kind, url, settings) == 5
    assert demo.ENV  # the credentials are the demo's emulator-only ones


def test_seed_files_load_real_exports(shared_dir: Path) -> None:
    samples = shared_dir / "samples"
    jira = build("jira", samples / "jira" / "devlake-raw-tables")
    assert re.match(r"\d+ issues from ", jira.holds)
    trello = build("trello", samples / "trello" / "small-board-export-2026.json")
    for url in served(trello):
        board = re.search(r"board id\(s\): (\w+)", " ".join(trello.credentials(url)))
        assert board is not None
        assert login_and_count("trello", url, {"boards": [board.group(1)]}) > 0
    sf = build("salesforce", samples / "salesforce")
    assert "Accounts" in sf.holds and "Opportunities" in sf.holds
    for url in served(sf):
        assert login_and_count("salesforce", url, {}) > 0


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="emulators exist for"):
        build("hubspot")
    with pytest.raises(UserError, match="no export format"):
        build("asana", tmp_path)
    with pytest.raises(UserError, match="no such file"):
        build("jira", tmp_path / "missing")
    with pytest.raises(UserError, match="DevLake"):
        build("jira", tmp_path)
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="sObject Tree"):
        build("salesforce", tmp_path)


def test_emulate_serves_in_the_foreground_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "emulate", "pipedrive", "--count", "3"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        seen = []
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if m := re.search(r"pipedrive emulator: (http://127\.0\.0\.1:\d+)", line):
                url = m.group(1)
        assert url is not None, seen
        # The URL is announced when the port is bound; uvicorn listens a moment later.
        while True:
            try:
                assert login_and_count("pipedrive", url, {}) == 3
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        # Read through the text wrapper, not communicate(): that reads the pipe's descriptor
        # and misses lines readline() above has already buffered.
        out, err = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 0, err
        assert "api_token=" in "".join(seen) + out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes the pipes

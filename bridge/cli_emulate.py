"""``salesbridge emulate KIND``: one tool's emulator in the foreground, for ops rehearsals.

It serves the same emulator the tests and ``salesbridge demo`` run, seeded either with
generated sales projects (the demo's, ``--count`` of them, with their history) or with a real
export given by ``--seed``:

* jira: a directory of Apache DevLake ``_raw_jira_api_*.csv`` tables;
* trello: a board's "Export as JSON" file, or a directory of DevLake ``_raw_trello_*.csv``;
* salesforce: an sObject Tree file (``sf data export tree``) or a directory of them
  (Accounts are imported before the Opportunities that refer to them).

Asana and Pipedrive have no export format to load: they take generated data only. The
credentials printed are the emulator's own (the demo's); no real service accepts them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bridge.cli import app, console
from bridge.errors import UserError

if TYPE_CHECKING:
    from bridge.emulator import Emulator

KINDS = ("jira", "trello", "asana", "salesforce", "pipedrive")
SEEDABLE = {
    "jira": "a directory of DevLake _raw_jira_api_*.csv tables",
    "trello": "a board export (JSON file) or a directory of DevLake _raw_trello_*.csv tables",
    "salesforce": "an sObject Tree JSON file or a directory of them",
}
# Import order of sObject Tree files: parents before the records that refer to them.
_SOBJECT_ORDER = ("User", "Account", "Contact", "Opportunity", "OpportunityContactRole", "Task")


@dataclass
class Emulated:
    """An emulator ready to serve, what it holds, and how to log in to it."""

    kind: str
    emulator: Emulator
    holds: str
    credentials: Callable[[str], list[str]]
    """base URL -> lines saying how to authenticate (and a first request to try)."""


def build(kind: str, seed: Path | None = None, count: int = 24) -> Emulated:
    """The emulator of ``kind``, seeded with ``seed`` (see the module docstring) or with
    ``count`` generated projects. Not started."""
    from bridge import demo

    if kind not in KINDS:
        raise UserError(f"unknown tool {kind!r}; emulators exist for: {', '.join(KINDS)}")
    if seed is not None and kind not in SEEDABLE:
        raise UserError(
            f"{kind} has no export format to load; leave out --seed (generated data, --count N)"
        )
    if seed is not None and not seed.exists():
        raise UserError(f"--seed {seed}: no such file or directory")
    if count < 0:
        raise UserError("--count must be 0 or more")
    if seed is None:
        from bridge.demo_data import DemoOptions, generate

        projects = list(generate(DemoOptions(count=count)))
        tool = demo.BUILDERS[kind](projects, demo.DemoClock())
        holds = f"{count} generated sales projects"
        return Emulated(kind, tool.emulator, holds, _credentials(kind, tool.settings))
    loader = {"jira": _jira, "trello": _trello, "salesforce": _salesforce}[kind]
    emulator, holds, settings = loader(seed)
    return Emulated(kind, emulator, holds, _credentials(kind, settings))


Loaded = tuple["Emulator", str, dict[str, object]]


def _jira(seed: Path) -> Loaded:
    from bridge.demo import ENV
    from connectors.jira.seed import seeded

    try:
        em = seeded(seed, token=ENV["SALESBRIDGE_DEMO_JIRA_TOKEN"])
    except ValueError as exc:
        raise UserError(f"--seed {seed}: {exc}") from None
    return em, f"{len(em.keys())} issues from {seed}", {}


def _trello(seed: Path) -> Loaded:
    from bridge.demo import ENV
    from connectors.trello.emulator import TrelloEmulator

    emu = TrelloEmulator(
        key=ENV["SALESBRIDGE_DEMO_TRELLO_KEY"], token=ENV["SALESBRIDGE_DEMO_TRELLO_TOKEN"]
    )
    try:
        boards = emu.load_devlake(seed) if seed.is_dir() else [emu.load_export(seed)]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--seed {seed}: not a Trello board export ({exc!r})") from None
    return emu, f"{len(emu.cards)} cards from {seed}", {"boards": boards}


def _tree_files(seed: Path) -> list[Path]:
    files = sorted(seed.glob("*.json")) if seed.is_dir() else [seed]

    def sobject(path: Path) -> str | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        records = data.get("records") if isinstance(data, dict) else None
        if not records:
            return None
        return str(records[0].get("attributes", {}).get("type", ""))

    typed = [(sobject(f), f) for f in files]
    trees = [(t, f) for t, f in typed if t]
    if not trees:
        raise UserError(f"--seed {seed}: no sObject Tree file (JSON with 'records') found")
    order = {name: i for i, name in enumerate(_SOBJECT_ORDER)}
    trees.sort(key=lambda tf: (order.get(tf[0] or "", len(order)), str(tf[1])))
    return [f for _, f in trees]


def _salesforce(seed: Path) -> Loaded:
    from bridge.demo import ENV, SF_CLIENT, SF_USER
    from connectors.salesforce.emulator import SalesforceEmulator, SalesforceOrg

    org = SalesforceOrg()
    org.add_user(
        SF_USER,
        "salesbridge@example.com",
        "Salesbridge Integration",
        password=ENV["SALESBRIDGE_DEMO_SF_PASSWORD"],
        security_token=ENV["SALESBRIDGE_DEMO_SF_TOKEN"],
    )
    org.add_client(SF_CLIENT, ENV["SALESBRIDGE_DEMO_SF_SECRET"])
    files = _tree_files(seed)
    try:
        refs = org.import_tree(*files)
    except (KeyError, ValueError) as exc:
        raise UserError(f"--seed {seed}: the import failed: {exc!r}") from None
    holds = f"{len(refs)} records from {', '.join(f.name for f in files)}"
    return SalesforceEmulator(org), holds, {}


def _credentials(kind: str, settings: dict[str, object]) -> Callable[[str], list[str]]:
    from bridge.demo import ENV, JIRA_BOT, SF_CLIENT, SF_USER

    def lines(url: str) -> list[str]:
        if kind == "jira":
            token = ENV["SALESBRIDGE_DEMO_JIRA_TOKEN"]
            return [
                f"Cloud basic auth: {JIRA_BOT} / {token}  (or Authorization: Bearer {token})",
                f"try: curl -u {JIRA_BOT}:{token} '{url}/rest/api/3/project'",
            ]
        if kind == "trello":
            key, token = ENV["SALESBRIDGE_DEMO_TRELLO_KEY"], ENV["SALESBRIDGE_DEMO_TRELLO_TOKEN"]
            boards = [str(b) for b in settings.get("boards") or []]  # type: ignore[attr-defined]
            return [
                f"API root {url}/1, key={key} token={token}; board id(s): {', '.join(boards)}",
                f"try: curl '{url}/1/boards/{boards[0]}/cards?key={key}&token={token}'",
            ]
        if kind == "asana":
            token = ENV["SALESBRIDGE_DEMO_ASANA_TOKEN"]
            return [
                f"API root {url}/api/1.0, Authorization: Bearer {token}",
                f"workspace {settings.get('workspace')}, "
                f"pipeline project {settings.get('project')}",
                f"try: curl -H 'Authorization: Bearer {token}' '{url}/api/1.0/users/me'",
            ]
        if kind == "salesforce":
            password = ENV["SALESBRIDGE_DEMO_SF_PASSWORD"] + ENV["SALESBRIDGE_DEMO_SF_TOKEN"]
            secret = ENV["SALESBRIDGE_DEMO_SF_SECRET"]
            return [
                f"OAuth password flow at {url}/services/oauth2/token: username {SF_USER}, "
                f"password {password}, client_id {SF_CLIENT}, client_secret {secret}",
                f"try: curl -d grant_type=password -d client_id={SF_CLIENT} "
                f"-d client_secret={secret} -d username={SF_USER} -d password={password} "
                f"{url}/services/oauth2/token",
            ]
        token = ENV["SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN"]
        return [
            f"api_token={token} (query parameter or x-api-token header)",
            f"try: curl '{url}/api/v2/deals?api_token={token}'",
        ]

    return lines


@app.command()
def emulate(
    kind: Annotated[str, typer.Argument(help=f"The tool: {', '.join(KINDS)}.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 0,
    seed: Annotated[
        Path | None,
        typer.Option(
            "--seed",
            help="Real data to load: Jira a DevLake table directory, Trello a board export "
            "JSON, Salesforce an sObject Tree file or directory.",
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", help="Generated projects when no --seed.")
    ] = 24,
) -> None:
    """Serve one tool's emulator in the foreground until Ctrl-C; prints its URL and logins."""
    emulated = build(kind, seed, count)
    out = console()

    def announce(url: str) -> None:
        out.print(f"{kind} emulator: {url}  ({emulated.holds})")
        for line in emulated.credentials(url):
            out.print(f"  {line}", markup=False)
        out.print("Ctrl-C stops it. These credentials work on this emulator only.")

    # uvicorn re-raises Ctrl-C once it has shut down: that is the normal end here.
    with contextlib.suppress(KeyboardInterrupt):
        emulated.emulator.serve_forever(port=port, announce=announce)
    out.print(f"{kind} emulator stopped")

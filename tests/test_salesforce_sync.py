"""End to end: Salesforce (emulated) and a board tool synced through ``bridge.sync.SyncEngine``.

The org and the board share one stepping clock (a second per write), the engine takes its
signposts from it, and the store is a real SQLite file. People edit the org through
:class:`SalesforceOrg` and the board through its backend, out of the bridge's sight.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.mapping import MappingSpec, parse_mapping
from bridge.model import get_path
from bridge.store import Store
from bridge.sync import SyncEngine, SyncReport
from connectors.memory import MemoryBackend, MemoryConnector, SteppingClock
from connectors.salesforce.emulator import SalesforceEmulator, SalesforceOrg, ValidationRule
from tests.test_salesforce_connector import MAPPING, connect, make_org, opportunity, salesforce_env
from tests.test_sync_engine import MAPPING as BOARD_MAPPING
from tests.test_sync_engine import mapping_text, tool_config

__all__ = ["salesforce_env"]

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
DATA = "/services/data/v59.0"
UPSERTS = f"{DATA}/sobjects/Opportunity/Canonical_Id__c/"


class SalesforceBridge:
    """The org (``crm``), a board tool (``board``), a store and the engine, wired as the runtime
    wires them."""

    def __init__(
        self,
        emulator: SalesforceEmulator,
        org: SalesforceOrg,
        db_url: str,
        *,
        board_fields: dict[str, str] | None = None,
        board_mapping: str = "",
    ) -> None:
        self.org, self.emulator = org, emulator
        self.crm = connect(emulator)
        text = MAPPING.read_text(encoding="utf-8").replace(
            'create_in_tool = "never"', 'create_in_tool = "all"'
        )
        self.crm_spec = parse_mapping(
            text, source=str(MAPPING), schema=self.crm.discover(), connector="salesforce"
        )
        self.crm.select(self.crm_spec.remote_fields_needed)  # what the runtime should call
        self.board_backend = MemoryBackend(clock=org.clock)
        config = tool_config()
        config.fields.update(board_fields or {})
        self.board = MemoryConnector("board", config, backend=self.board_backend)
        self.board_spec = parse_mapping(
            mapping_text() + board_mapping, source=str(BOARD_MAPPING),
            schema=self.board.discover(),
            connector="memory",
        )  # fmt: skip
        self.store = Store.open(db_url)
        specs: dict[str, MappingSpec] = {"crm": self.crm_spec, "board": self.board_spec}
        self.engine = SyncEngine(
            self.store,
            {"crm": self.crm, "board": self.board},  # type: ignore[dict-item]
            specs,
            clock=org.clock,
        )

    def sync(self, **options: Any) -> SyncReport:
        return self.engine.run(**options)

    def settle(self, runs: int = 3) -> SyncReport:
        """Sync until a run has nothing to do (Salesforce's own side effects, such as the
        probability a stage implies, come back once)."""
        for _ in range(runs):
            report = self.sync()
            assert report.ok, report.connectors
            if not report.plan.rows():
                return report
        raise AssertionError(f"no quiet run after {runs}: {report.plan.rows()}")

    def project_of(self, name: str, ref: str) -> str:
        link = self.store.get_link(name, ref)
        assert link is not None and link.live, f"{name}:{ref} is not linked"
        return link.project_id

    def ref_of(self, name: str, project_id: str) -> str:
        refs = [lk.ref for lk in self.store.links_for_project(project_id) if lk.connector == name]
        assert len(refs) == 1, f"{project_id} has {len(refs)} links in {name}"
        return refs[0]

    def hub(self, project_id: str) -> dict[str, Any]:
        project = self.store.get_project(project_id)
        assert project is not None
        return project

    def board_values(self, ref: str) -> dict[str, Any]:
        rec = self.board.get(ref)
        assert rec is not None
        return self.board_spec.to_canonical(rec)

    def board_edit(self, ref: str, actor: str = "pm@example.com", **values: Any) -> None:
        changes = {k.replace("__", "."): v for k, v in values.items()}
        self.board_backend.edit(ref, self.board_spec.to_remote(changes), actor=actor)

    def close(self) -> None:
        self.crm.close()
        self.store.close()


@pytest.fixture
def org() -> SalesforceOrg:
    return make_org(SteppingClock(START))


@pytest.fixture
def bridge(org: SalesforceOrg, tmp_path: Path, salesforce_env: None) -> Iterator[SalesforceBridge]:
    with SalesforceEmulator(org, min_batch_size=1) as emulator:
        b = SalesforceBridge(emulator, org, f"sqlite:///{tmp_path / 'store.db'}")
        yield b
        b.close()


def add_deal(org: SalesforceOrg, name: str, **values: Any) -> str:
    account = org.insert("Account", {"Name": f"{name} Corp"})
    owner = org.user_id("li.wei@acme.example")
    return org.insert(
        "Opportunity",
        opportunity(Name=name, AccountId=account, OwnerId=owner, Amount=1000.0, **values),
        actor=owner,
    )


def test_opportunities_sync_both_ways_creating_by_upsert(bridge: SalesforceBridge) -> None:
    org = bridge.org
    refs = [add_deal(org, f"Deal {i}") for i in range(3)]
    report = bridge.sync()
    assert report.ok, report.connectors
    assert report.connectors["board"].counts["push_created"] == 3
    pid = bridge.project_of("crm", refs[0])
    hub = bridge.hub(pid)
    assert (hub["name"], hub["stage"], hub["customer"]["name"]) == ("Deal 0", "lead", "Deal 0 Corp")
    assert hub["owner"] == {"name": "Li Wei", "email": "li.wei@example.com"}
    assert hub["amount"] == {"amount": "1000", "currency": "USD"}
    bridge.settle()

    # A project started on the board is created in Salesforce by an upsert on its id.
    new = bridge.board_spec.to_remote({
        "name": "Board-born deal", "stage": "qualification", "customer.name": "Initech",
        "expected_close_date": "2024-12-31", "amount": {"amount": "250.5", "currency": "EUR"},
    })  # fmt: skip
    board_ref = bridge.board_backend.add(new, actor="pm@example.com")
    bridge.emulator.controls.reset()
    bridge.settle()
    created_pid = bridge.project_of("board", board_ref)
    crm_ref = bridge.ref_of("crm", created_pid)
    stored = org.get("Opportunity", crm_ref)
    assert stored is not None
    assert stored["Canonical_Id__c"] == created_pid
    assert (stored["StageName"], stored["Amount"], stored["CurrencyIsoCode"]) == (
        "Qualification", 250.5, "EUR",
    )  # fmt: skip
    assert bridge.emulator.controls.count("PATCH", UPSERTS) == 1

    # A person changes the amount in Salesforce: it reaches the board.
    org.update("Opportunity", refs[1], {"Amount": 4321.5}, actor=org.user_id("bob@acme.example"))
    bridge.settle()
    board_of_1 = bridge.ref_of("board", bridge.project_of("crm", refs[1]))
    assert bridge.board_values(board_of_1)["amount"] == {"amount": "4321.5", "currency": "USD"}

    # A stage change on the board reaches Salesforce, and its history has the real time.
    board_of_0 = bridge.ref_of("board", pid)
    bridge.board_edit(board_of_0, stage="negotiation")
    bridge.settle()
    assert org.records["Opportunity"][refs[0]]["StageName"] == "Negotiation/Review"
    stages = [(h.old, h.new) for h in bridge.crm.history(refs[0]) if h.field == "StageName"]
    assert stages[-1] == ("Prospecting", "Negotiation/Review")
    # Salesforce set the probability the stage implies. The engine records the version our
    # write returned, so an incremental pull skips that side effect; the reconciliation census
    # brings it (until the engine merges what a write returns: see the report).
    assert bridge.sync(full=True).ok
    assert bridge.hub(pid)["probability"] == 90  # what Salesforce implies for the stage


def test_a_stage_change_refused_by_a_validation_rule_is_recorded_and_kept(
    bridge: SalesforceBridge,
) -> None:
    org = bridge.org
    org.add_validation_rule(
        ValidationRule(
            "Opportunity",
            "Negotiation_needs_next_step",
            "Say what the next step is before negotiating.",
            lambda old, new: new["StageName"] == "Negotiation/Review" and not new["NextStep"],
            field="NextStep",
        )
    )
    ref = add_deal(org, "Guarded deal")
    bridge.settle()
    pid = bridge.project_of("crm", ref)
    bridge.board_edit(bridge.ref_of("board", pid), stage="negotiation")

    report = bridge.sync()
    assert report.connectors["crm"].counts["rejected"] == 1
    (held,) = bridge.store.list_quarantine("crm")
    assert held.ref == ref
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in held.reason
    assert "Say what the next step is before negotiating." in held.reason
    assert org.records["Opportunity"][ref]["StageName"] == "Prospecting"
    assert bridge.hub(pid)["stage"] == "negotiation", "the board's change was lost"

    # Someone fills in the next step in Salesforce: the waiting stage change goes through.
    org.update("Opportunity", ref, {"NextStep": "Send the contract"})
    bridge.settle()
    assert org.records["Opportunity"][ref]["StageName"] == "Negotiation/Review"
    assert bridge.store.list_quarantine("crm") == []


def test_429_is_retried_and_request_limit_exceeded_stops_only_salesforce(
    bridge: SalesforceBridge,
) -> None:
    org = bridge.org
    add_deal(org, "Deal A")
    bridge.emulator.controls.fail(429, path=f"{DATA}/queryAll", retry_after=2)
    bridge.settle()
    assert 2 in bridge.crm.waits  # type: ignore[attr-defined]

    ref = add_deal(org, "Deal B")
    bridge.emulator.controls.fail(
        403, times=None, path=f"{DATA}/queryAll",
        message="REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.",
    )  # fmt: skip
    report = bridge.sync()
    assert report.connectors["crm"].status == "failed"
    assert "REQUEST_LIMIT_EXCEEDED" in (report.connectors["crm"].error or "")
    assert report.connectors["board"].status == "ok"
    assert bridge.store.get_link("crm", ref) is None

    bridge.emulator.controls.reset()
    bridge.settle()
    bridge.project_of("crm", ref)


def test_an_expired_session_is_renewed_during_a_sync(bridge: SalesforceBridge) -> None:
    org = bridge.org
    ref = add_deal(org, "Deal")
    bridge.settle()
    org.expire_sessions()
    org.update("Opportunity", ref, {"Description": "after the timeout"})
    bridge.settle()
    pid = bridge.project_of("crm", ref)
    assert bridge.board_values(bridge.ref_of("board", pid))["description"] == "after the timeout"
    assert bridge.emulator.controls.count("POST", "/services/oauth2/token") == 2


def test_a_malformed_record_is_quarantined_while_the_rest_sync(bridge: SalesforceBridge) -> None:
    org = bridge.org
    good = [add_deal(org, f"Deal {i}") for i in range(2)]
    odd = add_deal(org, "Odd deal", Probability=12.5)  # a percent the project cannot hold
    report = bridge.sync()
    assert report.ok, report.connectors
    held = {q.ref: q.reason for q in bridge.store.list_quarantine("crm")}
    assert set(held) == {odd}
    assert "probability" in held[odd] and "12.5" in held[odd]
    for ref in good:
        bridge.project_of("crm", ref)

    org.update("Opportunity", odd, {"Probability": 15.0})
    bridge.settle()
    assert bridge.store.list_quarantine("crm") == []
    assert get_path(bridge.hub(bridge.project_of("crm", odd)), "probability") == 15


BOARD_LISTS = """
[fields.next_steps]
remote = "Next steps"
type = "json"

[fields.actions]
remote = "Actions"
type = "json"
"""


def test_a_stakeholder_and_a_next_step_added_on_the_board_reach_salesforce_once(
    org: SalesforceOrg, tmp_path: Path, salesforce_env: None
) -> None:
    with SalesforceEmulator(org, min_batch_size=1) as emulator:
        bridge = SalesforceBridge(
            emulator, org, f"sqlite:///{tmp_path / 'store.db'}",
            board_fields={"Next steps": "json", "Actions": "json"}, board_mapping=BOARD_LISTS,
        )  # fmt: skip
        try:
            ref = add_deal(org, "Listed deal")
            bridge.settle()
            pid = bridge.project_of("crm", ref)
            person = {"name": "Mei Chen", "title": "CFO", "role": "economic_buyer",
                      "attitude": "unknown", "email": "mei@globex.example"}  # fmt: skip
            step = {"what": "Send proposal",
                    "owner": {"name": "Li Wei", "email": "li.wei@example.com"},
                    "due": "2024-04-02"}  # fmt: skip
            action = {"what": "Discovery call", "at": "2024-02-28T10:00:00Z",
                      "by": "pm@example.com"}  # fmt: skip
            bridge.board_edit(
                bridge.ref_of("board", pid), stakeholders=[person], next_steps=[step],
                actions=[action],
            )  # fmt: skip
            report = bridge.sync()
            assert report.ok, report.connectors
            assert report.connectors["crm"].counts["pushed"] == 1

            (contact,) = org.records["Contact"].values()
            assert (contact["Name"], contact["Email"]) == ("Mei Chen", "mei@globex.example")
            (role,) = org.records["OpportunityContactRole"].values()
            assert (role["OpportunityId"], role["Role"]) == (ref, "Economic Decision Maker")
            tasks = {t["Subject"]: t for t in org.records["Task"].values()}
            assert tasks["Send proposal"]["Status"] == "Not Started"
            assert tasks["Send proposal"]["OwnerId"] == org.user_id("li.wei@acme.example")
            assert tasks["Discovery call"]["Status"] == "Completed"

            # The next run plans nothing, and neither does a census that reads every record.
            again = bridge.sync()
            assert again.ok and not again.plan.rows(), again.plan.rows()
            census = bridge.sync(full=True)
            assert census.ok and not census.plan.rows(), census.plan.rows()
            hub = bridge.hub(pid)
            assert (hub["stakeholders"], hub["next_steps"], hub["actions"]) == (
                [person], [step], [action],
            )  # fmt: skip

            # Done on the board: the next step becomes an action; Salesforce follows.
            done = {
                "what": "Send proposal",
                "at": "2024-04-01T08:00:00Z",
                "by": "li.wei@example.com",
            }
            bridge.board_edit(bridge.ref_of("board", pid), next_steps=[], actions=[action, done])
            assert bridge.sync().ok
            open_tasks = [t for t in org.records["Task"].values()
                          if not t["IsDeleted"] and not t["IsClosed"]]  # fmt: skip
            assert open_tasks == []
            census = bridge.sync(full=True)
            assert census.ok and not census.plan.rows(), census.plan.rows()
            assert bridge.hub(pid)["actions"] == [action, done]
        finally:
            bridge.close()


def test_a_salesforce_edit_made_during_a_batch_push_is_not_overwritten(
    bridge: SalesforceBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The board changes two deals' descriptions; between the bridge's pull and its batch
    push a person changes one of them in Salesforce. That one is deferred (the collections
    write checks the versions first), the other is written; the person's text survives."""
    org = bridge.org
    refs = [add_deal(org, f"Deal {i}") for i in range(2)]
    bridge.settle()
    for ref in refs:
        bridge.board_edit(
            bridge.ref_of("board", bridge.project_of("crm", ref)), description="board"
        )
    batch = bridge.crm.update_many

    def person_edits_first(changes: Any, expected: Any) -> Any:
        org.update(
            "Opportunity", refs[1], {"Description": "person"},
            actor=org.user_id("bob@acme.example"),
        )  # fmt: skip
        return batch(changes, expected)

    monkeypatch.setattr(bridge.crm, "update_many", person_edits_first)
    report = bridge.sync()
    monkeypatch.undo()

    assert report.ok, report.connectors
    counts = report.connectors["crm"].counts
    assert (counts["pushed"], counts["deferred"]) == (1, 1), counts
    assert org.records["Opportunity"][refs[0]]["Description"] == "board"
    assert org.records["Opportunity"][refs[1]]["Description"] == "person"

    # The next run pulls the person's edit: it meets the board's as a conflict, which the
    # mapping's policy settles (the newer edit, the person's, wins) instead of losing it unseen.
    report = bridge.sync()
    assert report.ok, report.connectors
    assert report.connectors["crm"].counts["conflicts"] == 1
    pid = bridge.project_of("crm", refs[1])
    assert bridge.hub(pid)["description"] == "person"
    assert org.records["Opportunity"][refs[1]]["Description"] == "person"
    assert bridge.board_values(bridge.ref_of("board", pid))["description"] == "person"


ROLES = ("decision_maker", "economic_buyer", "influencer", "champion", "user",
         "technical_buyer", "blocker", "other")  # fmt: skip
ATTITUDES = ("supportive", "neutral", "opposed", "unknown")


def people(shift: int = 0) -> list[dict[str, Any]]:
    """A stakeholder per role, the attitudes in turn (``shift`` moves both along)."""
    return [
        {"name": f"Person {i}", "title": "VP", "role": ROLES[(i + shift) % len(ROLES)],
         "attitude": ATTITUDES[(i + shift) % len(ATTITUDES)], "email": f"p{i}@globex.example"}
        for i in range(len(ROLES))
    ]  # fmt: skip


def test_every_role_and_attitude_round_trips_through_salesforce(
    bridge: SalesforceBridge,
) -> None:
    """Stakeholders set on the board, pushed to Salesforce and pulled again (by the incremental
    pull that follows and by a census that reads every record) come back as they were: every
    role has a Role picklist value and the attitude lives in OpportunityContactRole.Attitude__c.
    Before, Salesforce read back "other" for a blocker and "unknown" for every attitude, and
    the census overwrote the hub (and the board) with that."""
    org = bridge.org
    ref = add_deal(org, "Stakeholder deal")
    bridge.settle()
    pid = bridge.project_of("crm", ref)
    board_ref = bridge.ref_of("board", pid)
    for shift in (0, 3):  # set, then every role and attitude changed
        wanted = people(shift)
        bridge.board_edit(board_ref, stakeholders=wanted)
        report = bridge.sync()
        assert report.ok, report.connectors
        assert report.connectors["crm"].counts["pushed"] == 1
        live = [r for r in org.records["OpportunityContactRole"].values() if not r["IsDeleted"]]
        assert len(live) == len(ROLES)
        assert {r["Attitude__c"] for r in live} == {"Supportive", "Neutral", "Opposed", "Unknown"}
        assert "Blocker" in {r["Role"] for r in live}

        again = bridge.sync()
        assert again.ok and not again.plan.rows(), again.plan.rows()
        census = bridge.sync(full=True)
        assert census.ok and not census.plan.rows(), census.plan.rows()
        assert bridge.hub(pid)["stakeholders"] == wanted
        assert bridge.board_values(board_ref)["stakeholders"] == wanted

    # A person changes an attitude in Salesforce; the census brings it to the hub and board
    # (a contact role's edit does not move the opportunity's SystemModstamp).
    (row,) = [r for r in org.records["OpportunityContactRole"].values()
              if not r["IsDeleted"] and r["Role"] == "Blocker"]  # fmt: skip
    org.update("OpportunityContactRole", row["Id"], {"Attitude__c": "Supportive"})
    assert bridge.sync(full=True).ok
    (blocker,) = [p for p in bridge.hub(pid)["stakeholders"] if p["role"] == "blocker"]
    assert blocker["attitude"] == "supportive"
    assert bridge.board_values(board_ref)["stakeholders"] == bridge.hub(pid)["stakeholders"]

"""End to end: Pipedrive (the emulator) and a board (memory tool) synced by the real engine.

``crm`` is the Pipedrive connector with ``mappings/pipedrive.toml``; ``board`` is a memory tool
with the reference mapping, which creates every project. People edit deals in the emulator
(``emu.edit_deal``) and cards on the board; the engine runs as ``salesbridge sync`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import STAGE_NAMES, TOOL_FIELDS
from bridge.http import Auth, HttpClient, RetryPolicy
from bridge.mapping import MappingSpec, parse_mapping
from bridge.model import get_path
from bridge.store import Store
from bridge.sync import SyncEngine, SyncReport
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector
from connectors.pipedrive.connector import PipedriveConfig, PipedriveConnector
from connectors.pipedrive.emulator import API_TOKEN, PipedriveEmulator

REPO = Path(__file__).resolve().parent.parent
TOKEN_VAR = "SALESBRIDGE_TEST_PIPEDRIVE_TOKEN"


class Bridge:
    def __init__(
        self,
        db_url: str,
        *,
        token: str = API_TOKEN,
        crm_creates: bool = False,
        board_fields: dict[str, str] | None = None,
        board_mapping: str = "",
    ) -> None:
        self.emu = PipedriveEmulator(seed=False).start()
        self.sleeps: list[float] = []
        http = HttpClient(
            "crm",
            self.emu.base_url,
            auth=Auth.header("x-api-token", token),
            retry=RetryPolicy(max_attempts=6),
            sleep=self.sleeps.append,
        )
        config = PipedriveConfig(token=f"env:{TOKEN_VAR}", base_url=self.emu.base_url)
        self.crm = PipedriveConnector("crm", config, http=http)
        self.backend = MemoryBackend()
        board_config = MemoryConfig(
            fields={**TOOL_FIELDS, **(board_fields or {})}, stage_values=list(STAGE_NAMES.values())
        )
        self.board = MemoryConnector("board", board_config, backend=self.backend)
        text = (REPO / "mappings" / "pipedrive.toml").read_text(encoding="utf-8")
        if crm_creates:
            text = text.replace('create_in_tool = "never"', 'create_in_tool = "all"')
        good = PipedriveConnector("crm", config)  # the schema, read with the right token
        self.specs: dict[str, MappingSpec] = {
            "crm": parse_mapping(text, schema=good.discover(), connector="pipedrive"),
            "board": parse_mapping(
                (REPO / "mappings" / "memory.toml").read_text(encoding="utf-8") + board_mapping,
                schema=self.board.discover(),
                connector="memory",
            ),
        }
        good.close()
        self.store = Store.open(db_url)
        tools = {"crm": self.crm, "board": self.board}
        self.engine = SyncEngine(self.store, tools, self.specs)  # type: ignore[arg-type]
        self.emu.controls.reset()

    def sync(self, **options: Any) -> SyncReport:
        return self.engine.run(**options)

    def close(self) -> None:
        self.crm.close()
        self.store.close()
        self.emu.stop()

    # -- reading

    def project_of(self, name: str, ref: str) -> dict[str, Any]:
        link = self.store.get_link(name, ref)
        assert link is not None and link.live, f"{name}:{ref} is not linked"
        project = self.store.get_project(link.project_id)
        assert project is not None
        return project

    def card(self, project_id: str) -> str:
        refs = [
            lk.ref for lk in self.store.links_for_project(project_id) if lk.connector == "board"
        ]
        assert len(refs) == 1, refs
        return refs[0]

    def board_values(self, ref: str) -> dict[str, Any]:
        rec = self.board.get(ref)
        assert rec is not None
        return self.specs["board"].to_canonical(rec)

    def crm_values(self, deal: int) -> dict[str, Any]:
        rec = self.crm.get(str(deal))
        assert rec is not None
        return self.specs["crm"].to_canonical(rec)

    def edit_card(self, ref: str, **values: Any) -> None:
        changes = {k.replace("__", "."): v for k, v in values.items()}
        self.backend.edit(ref, self.specs["board"].to_remote(changes), actor="pm@example.com")


@pytest.fixture
def bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bridge]:
    monkeypatch.setenv(TOKEN_VAR, API_TOKEN)
    b = Bridge(f"sqlite:///{tmp_path / 'store.db'}")
    yield b
    b.close()


def a_deal(emu: PipedriveEmulator, title: str = "Acme rollout", **extra: Any) -> int:
    org = emu.add_organization("Acme Ltd")
    person = emu.add_person("Wang Fang", org_id=org, job_title="CIO",
                            emails=[{"value": "wang@acme.example", "primary": True}])  # fmt: skip
    return emu.add_deal(
        user_id=3,
        title=title,
        owner_id=3,
        org_id=org,
        person_id=person,
        value=120000,
        currency="CNY",
        probability=30,
        expected_close_date="2026-06-30",
        stage_id=emu.stage_id("Sales pipeline", "Qualified"),
        custom_fields={
            emu.field_key("Priority"): emu.option_id("Priority", "High"),
            emu.field_key("Region"): emu.option_id("Region", "APAC"),
            emu.field_key("Project number"): "SP-1",
        },
        **extra,
    )


# --------------------------------------------------------------------------- scenarios


def test_a_new_deal_becomes_a_project_and_a_card(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    emu.add_activity(deal, user_id=3, subject="Discovery call", done=True)
    emu.add_activity(deal, user_id=3, subject="Send proposal", due_date="2026-04-01")
    report = bridge.sync()
    assert report.ok, report.connectors
    project = bridge.project_of("crm", str(deal))
    assert project["name"] == "Acme rollout"
    assert project["customer"] == {"name": "Acme Ltd", "external_id": str(emu.organizations and 1)}
    assert project["owner"] == {"name": "Li Wei", "email": "li.wei@example.com"}
    assert (project["stage"], project["status"], project["priority"]) == (
        "qualification",
        "open",
        "high",
    )
    assert project["amount"] == {"amount": "120000", "currency": "CNY"}
    assert project["expected_close_date"] == "2026-06-30"
    assert project["custom"]["region"] == "APAC"
    assert [s["name"] for s in project["stakeholders"]] == ["Wang Fang"]
    assert [a["what"] for a in project["actions"]] == ["Discovery call"]
    assert [n["what"] for n in project["next_steps"]] == ["Send proposal"]
    card = bridge.board_values(bridge.card(project["id"]))
    assert (card["name"], card["stage"], card["priority"]) == (
        "Acme rollout",
        "qualification",
        "high",
    )

    bridge.emu.controls.reset()
    again = bridge.sync()
    assert again.ok and again.plan.rows() == []
    assert emu.controls.count() == 1, [e.path for e in emu.controls.log]


def test_updates_flow_both_ways(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    pid = bridge.project_of("crm", str(deal))["id"]
    card = bridge.card(pid)

    emu.edit_deal(deal, user_id=2, title="Acme rollout, phase 2", value=150000.5)
    bridge.edit_card(card, expected_close_date="2026-09-30", priority="critical",
                     custom__region="EMEA")  # fmt: skip
    report = bridge.sync()
    assert report.ok, report.connectors
    hub = bridge.project_of("crm", str(deal))
    assert hub["name"] == "Acme rollout, phase 2"
    assert hub["amount"] == {"amount": "150000.5", "currency": "CNY"}
    assert bridge.board_values(card)["name"] == "Acme rollout, phase 2"
    pd = emu.deal(deal)
    assert pd["expected_close_date"] == "2026-09-30"
    assert pd["custom_fields"][emu.field_key("Priority")] == emu.option_id("Priority", "Urgent")
    assert pd["custom_fields"][emu.field_key("Region")] == emu.option_id("Region", "EMEA")
    assert report.connectors["crm"].counts["pushed"] == 1
    assert bridge.sync().plan.rows() == [], "our own writes read back as no-ops"


def test_stage_moves_keep_pipedrive_times_and_history(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    emu.edit_deal(deal, user_id=2, stage_id=emu.stage_id("Sales pipeline", "Negotiations started"))
    assert bridge.sync().ok
    hub = bridge.project_of("crm", str(deal))
    assert hub["stage"] == "negotiation"
    assert hub["stage_entered_at"].replace("+00:00", "Z") == emu.deal(deal)["stage_change_time"]
    assert bridge.board_values(bridge.card(hub["id"]))["stage"] == "negotiation"
    events = [e for e in bridge.store.events_for(hub["id"]) if e.field == "stage"]
    assert [(e.old, e.new) for e in events][-1] == ("qualification", "negotiation")
    flow = [h for h in bridge.crm.history(str(deal)) if h.field == "stage"]
    assert [(h.old, h.new, h.actor) for h in flow] == [
        (
            "Sales pipeline / Qualified",
            "Sales pipeline / Negotiations started",
            "jane@pipedrive.com",
        )
    ]

    # and back from the board: a card moved to Delivery moves the deal to the Delivery pipeline
    bridge.edit_card(bridge.card(hub["id"]), stage="delivery")
    assert bridge.sync().ok
    pd = emu.deal(deal)
    assert (pd["pipeline_id"], pd["stage_id"]) == (2, emu.stage_id("Delivery", "Delivering"))


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_won_and_lost_come_from_pipedrive(bridge: Bridge, outcome: str) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    changes: dict[str, Any] = {"status": outcome}
    if outcome == "lost":
        changes["lost_reason"] = "Budget frozen"
    emu.edit_deal(deal, user_id=3, **changes)
    assert bridge.sync().ok
    hub = bridge.project_of("crm", str(deal))
    assert hub["status"] == outcome
    assert hub.get("lost_reason") == changes.get("lost_reason")
    assert bridge.board_values(bridge.card(hub["id"]))["status"] == outcome


def test_custom_fields_resolve_by_name_and_option_labels(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    emu.edit_deal(deal, custom_fields={
        emu.field_key("Products"): [emu.option_id("Products", "Platform"),
                                    emu.option_id("Products", "Support")]})  # fmt: skip
    assert bridge.sync().ok
    hub = bridge.project_of("crm", str(deal))
    assert hub["code"] == "SP-1"
    assert hub["custom"]["products"] == ["Platform", "Support"]
    emu.edit_deal(deal, custom_fields={emu.field_key("Priority"): emu.option_id("Priority", "Low")})
    assert bridge.sync().ok
    assert bridge.project_of("crm", str(deal))["priority"] == "low"
    assert bridge.board_values(bridge.card(hub["id"]))["priority"] == "low"


def test_a_conflict_is_recorded_and_resolved_by_ownership_or_policy(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    pid = bridge.project_of("crm", str(deal))["id"]
    card = bridge.card(pid)
    # amount is owned by Pipedrive; the close date goes to the newest change
    bridge.edit_card(card, amount={"amount": "99", "currency": "CNY"},
                     expected_close_date="2026-12-31")  # fmt: skip
    emu.edit_deal(deal, user_id=2, value=130000, expected_close_date="2026-08-31")
    assert bridge.sync().ok
    conflicts = {c.field: c for c in bridge.store.list_conflicts(False, project_id=pid)}
    assert {"amount", "expected_close_date"} <= set(conflicts)
    hub = bridge.store.get_project(pid)
    assert hub is not None
    assert hub["amount"] == {"amount": "130000", "currency": "CNY"}
    assert emu.deal(deal)["value"] == 130000
    assert bridge.board_values(card)["amount"] == hub["amount"]
    assert bridge.board_values(card)["expected_close_date"] == hub["expected_close_date"]
    assert emu.deal(deal)["expected_close_date"] == hub["expected_close_date"]


def test_a_429_storm_slows_the_sync_down_but_loses_nothing(bridge: Bridge) -> None:
    emu = bridge.emu
    deals = [a_deal(emu, title=f"Deal {i}") for i in range(3)]
    emu.controls.fail(429, times=4, retry_after=3)
    report = bridge.sync()
    assert report.ok, report.connectors
    assert bridge.sleeps == [3, 3, 3, 3]
    assert emu.controls.count(status=429) == 4
    assert {bridge.project_of("crm", str(d))["name"] for d in deals} == {
        "Deal 0",
        "Deal 1",
        "Deal 2",
    }


def test_a_bad_token_fails_the_connector_and_unlinks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VAR, API_TOKEN)
    good = Bridge(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        a_deal(good.emu)
        assert good.sync().ok
        good.crm._http = HttpClient(
            "crm", good.emu.base_url, auth=Auth.header("x-api-token", "revoked")
        )
        report = good.sync(full=True)
        crm = report.connectors["crm"]
        assert crm.status == "failed"
        assert "401" in (crm.error or "") and "revoked" not in (crm.error or "")
        assert report.connectors["board"].status == "ok"
        assert good.store.count_links("crm") == 1
    finally:
        good.close()


def test_a_malformed_deal_is_quarantined_and_the_rest_synced(bridge: Bridge) -> None:
    emu = bridge.emu
    ok, bad = a_deal(emu, title="Fine"), a_deal(emu, title="Broken")
    emu.corrupt_deal(bad, custom_fields={emu.field_key("Priority"): 4242})
    report = bridge.sync()
    assert report.ok, report.connectors
    assert report.connectors["crm"].counts["quarantined"] == 1
    held = bridge.store.list_quarantine("crm")
    assert [q.ref for q in held] == [str(bad)]
    assert "Priority: option id 4242 no longer exists" in held[0].reason
    assert bridge.project_of("crm", str(ok))["name"] == "Fine"
    emu.edit_deal(bad, custom_fields={emu.field_key("Priority"): emu.option_id("Priority", "Low")})
    assert bridge.sync().ok
    assert bridge.project_of("crm", str(bad))["priority"] == "low"
    assert bridge.store.list_quarantine("crm") == []


def test_request_counts_of_a_first_and_a_reconciling_sync(bridge: Bridge) -> None:
    emu = bridge.emu
    for i in range(12):
        a_deal(emu, title=f"Deal {i}")
    bridge.crm._meta = None  # a cold start: metadata is read once per run at most
    assert bridge.sync().ok
    c = emu.controls
    # metadata 5 (users, pipelines, stages, deal and person fields), then the deals page, its
    # organizations and persons, and the activities of each of the 12 new deals
    assert c.count("GET", "/api/v2/deals") == 1
    assert c.count("GET", "/api/v2/organizations") == 1
    assert c.count("GET", "/api/v2/persons") == 1
    assert c.count("GET", "/api/v2/activities") == 12, "12 deals: one activities call each"
    assert c.count() == 5 + 1 + 1 + 1 + 12
    c.reset()
    assert bridge.sync(full=True).ok
    assert c.count() == 1 + 1 + 1 + 1, "a census: deals, all activities, orgs, persons"


def test_a_project_from_the_board_is_created_in_pipedrive_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VAR, API_TOKEN)
    b = Bridge(f"sqlite:///{tmp_path / 'store.db'}", crm_creates=True)
    try:
        canonical = {"name": "Board-born", "stage": "proposal", "customer.name": "Zeta GmbH",
                     "amount": {"amount": "5000", "currency": "EUR"}}  # fmt: skip
        ref = b.backend.add(b.specs["board"].to_remote(canonical), actor="pm@example.com")
        assert b.sync().ok
        pid = b.store.get_link("board", ref)
        assert pid is not None
        deals = [d for d in b.emu.deals.values() if not d["is_deleted"]]
        assert len(deals) == 1
        stamp = deals[0]["custom_fields"][b.emu.field_key("Salesbridge ID")]
        assert stamp == pid.project_id
        assert b.emu.organizations[deals[0]["org_id"]]["name"] == "Zeta GmbH"
        assert b.crm_values(deals[0]["id"])["stage"] == "proposal"
        assert b.sync().ok
        assert len([d for d in b.emu.deals.values() if not d["is_deleted"]]) == 1
    finally:
        b.close()


def test_mapping_file_checks_against_the_emulator_schema(bridge: Bridge) -> None:
    spec = bridge.specs["crm"]
    assert {"stage", "amount", "priority", "custom.region"} <= spec.pushed_paths
    assert spec.sync.stamp_field == bridge.emu.field_key("Salesbridge ID")
    assert get_path({"a": {"b": 1}}, "a.b") == 1


BOARD_LISTS = """
[fields.next_steps]
remote = "Next steps"
type = "json"

[fields.actions]
remote = "Actions"
type = "json"
"""


def test_a_next_step_added_on_the_board_reaches_pipedrive_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VAR, API_TOKEN)
    b = Bridge(
        f"sqlite:///{tmp_path / 'store.db'}",
        board_fields={"Next steps": "json", "Actions": "json"},
        board_mapping=BOARD_LISTS,
    )
    try:
        deal = a_deal(b.emu)
        assert b.sync().ok
        pid = b.project_of("crm", str(deal))["id"]
        step = {"what": "Send proposal", "owner": {"name": "Li Wei", "email": "li.wei@example.com"},
                "due": "2026-04-02"}  # fmt: skip
        other = {"what": "Site visit", "owner": {"name": "Pat", "email": "pat@partner.example"},
                 "due": None}  # fmt: skip
        action = {"what": "Discovery call", "at": "2026-02-28T10:00:00Z", "by": "pm@example.com"}
        b.edit_card(b.card(pid), next_steps=[step, other], actions=[action])
        report = b.sync()
        assert report.ok, report.connectors
        assert report.connectors["crm"].counts["pushed"] == 1
        live = {a["subject"]: a for a in b.emu.activities.values() if not a["is_deleted"]}
        assert (live["Send proposal"]["done"], live["Send proposal"]["owner_id"]) == (False, 3)
        assert live["Send proposal"]["due_date"] == "2026-04-02"
        assert live["Discovery call"]["done"] is True

        # The next run plans nothing, and neither does a census that reads every deal.
        again = b.sync()
        assert again.ok and not again.plan.rows(), again.plan.rows()
        census = b.sync(full=True)
        assert census.ok and not census.plan.rows(), census.plan.rows()
        hub = b.project_of("crm", str(deal))
        assert (hub["next_steps"], hub["actions"]) == ([step, other], [action])

        # Done on the board: the next step becomes a done activity.
        done = {"what": "Send proposal", "at": "2026-04-01T08:00:00Z", "by": "li.wei@example.com"}
        b.edit_card(b.card(pid), next_steps=[other], actions=[action, done])
        assert b.sync().ok
        census = b.sync(full=True)
        assert census.ok and not census.plan.rows(), census.plan.rows()
        assert b.crm_values(deal)["next_steps"] == [other]
        assert b.crm_values(deal)["actions"] == [action, done]
    finally:
        b.close()


# --------------------------------------------------------------------------- stakeholders


def someone(emu: PipedriveEmulator, name: str, email: str, role: str, attitude: str) -> int:
    """A person in Pipedrive with a role and an attitude (option labels)."""
    custom = {
        emu.person_field_key("Deal role"): emu.person_option_id("Deal role", role),
        emu.person_field_key("Attitude"): emu.person_option_id("Attitude", attitude),
    }
    return emu.add_person(name, emails=[{"value": email}], custom_fields=custom)


def names(people: list[dict[str, Any]]) -> list[str]:
    return [p["name"] for p in people]


WANG = {"name": "Wang Fang", "title": "CIO", "role": "other", "attitude": "unknown",
        "email": "wang@acme.example"}  # fmt: skip


def test_a_stakeholder_added_in_the_hub_becomes_a_participant_with_role_and_attitude(
    bridge: Bridge,
) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    pid = bridge.project_of("crm", str(deal))["id"]
    assert bridge.project_of("crm", str(deal))["stakeholders"] == [WANG]
    wang = {**WANG, "role": "decision_maker", "attitude": "supportive"}
    ana = {"name": "Ana Lima", "title": "CFO", "role": "economic_buyer", "attitude": "neutral",
           "email": "ana@acme.example"}  # fmt: skip
    bridge.edit_card(bridge.card(pid), stakeholders=[wang, ana])
    report = bridge.sync()
    assert report.ok, report.connectors
    assert report.connectors["crm"].counts["pushed"] == 1
    (wang_id, ana_id) = emu.participants_of(deal)
    assert emu.deal(deal)["person_id"] == wang_id
    role, attitude = emu.person_field_key("Deal role"), emu.person_field_key("Attitude")
    ana_person = emu.person(ana_id)
    assert (ana_person["name"], ana_person["job_title"]) == ("Ana Lima", "CFO")
    assert ana_person["org_id"] == emu.deal(deal)["org_id"]
    assert ana_person["custom_fields"][role] == emu.person_option_id("Deal role", "Economic buyer")
    assert ana_person["custom_fields"][attitude] == emu.person_option_id("Attitude", "Neutral")
    assert emu.person(wang_id)["custom_fields"][role] == emu.person_option_id(
        "Deal role", "Decision maker"
    )

    # What was written reads back as written: nothing to do, even for a census.
    again = bridge.sync()
    assert again.ok and again.plan.rows() == [], again.plan.rows()
    census = bridge.sync(full=True)
    assert census.ok and census.plan.rows() == [], census.plan.rows()
    assert bridge.project_of("crm", str(deal))["stakeholders"] == [wang, ana]
    assert bridge.crm_values(deal)["stakeholders"] == [wang, ana]


def test_a_participant_added_in_pipedrive_reaches_the_hub_and_the_board(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    emu.add_participant(deal, someone(emu, "Bo Chen", "bo@acme.example", "Influencer", "Opposed"))
    report = bridge.sync()
    assert report.ok, report.connectors
    hub = bridge.project_of("crm", str(deal))
    bo = {"name": "Bo Chen", "title": None, "role": "influencer", "attitude": "opposed",
          "email": "bo@acme.example"}  # fmt: skip
    assert hub["stakeholders"] == [WANG, bo]
    assert bridge.board_values(bridge.card(hub["id"]))["stakeholders"] == [WANG, bo]
    assert report.connectors["crm"].counts.get("pushed", 0) == 0, "nothing to write back"


def test_a_stakeholder_removed_on_either_side_is_removed_on_the_other(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    bo = someone(emu, "Bo Chen", "bo@acme.example", "User", "Neutral")
    cai = someone(emu, "Cai Yun", "cai@acme.example", "Blocker", "Opposed")
    emu.add_participant(deal, bo)
    emu.add_participant(deal, cai)
    assert bridge.sync().ok
    hub = bridge.project_of("crm", str(deal))
    card = bridge.card(hub["id"])
    assert names(hub["stakeholders"]) == ["Wang Fang", "Bo Chen", "Cai Yun"]

    # Removed on the board: Bo stops being a participant (the person stays in Pipedrive).
    bridge.edit_card(card, stakeholders=[hub["stakeholders"][0], hub["stakeholders"][2]])
    assert bridge.sync().ok
    assert emu.participants_of(deal) == [emu.deal(deal)["person_id"], cai]
    assert bo in emu.persons

    # Removed in Pipedrive: Cai leaves the hub and the board.
    emu.remove_participant(deal, cai)
    report = bridge.sync()
    assert report.ok, report.connectors
    assert names(bridge.project_of("crm", str(deal))["stakeholders"]) == ["Wang Fang"]
    assert names(bridge.board_values(card)["stakeholders"]) == ["Wang Fang"]
    assert bridge.sync(full=True).plan.rows() == []


def test_stakeholders_edited_on_both_sides_are_a_recorded_conflict(bridge: Bridge) -> None:
    emu = bridge.emu
    deal = a_deal(emu)
    assert bridge.sync().ok
    pid = bridge.project_of("crm", str(deal))["id"]
    card = bridge.card(pid)
    bridge.edit_card(card, stakeholders=[{**WANG, "title": "CTO"}])
    emu.add_participant(deal, someone(emu, "Bo Chen", "bo@acme.example", "User", "Neutral"))
    report = bridge.sync()
    assert report.ok, report.connectors
    conflicts = bridge.store.list_conflicts(False, project_id=pid)
    assert [c.field for c in conflicts] == ["stakeholders"]
    # Newest wins (the default policy): one side's list, and all three agree on it after.
    bo = {"name": "Bo Chen", "title": None, "role": "user", "attitude": "neutral",
          "email": "bo@acme.example"}  # fmt: skip
    hub = bridge.project_of("crm", str(deal))["stakeholders"]
    assert hub in ([{**WANG, "title": "CTO"}], [WANG, bo])
    assert conflicts[0].resolution in ("hub", "remote")
    assert hub == conflicts[0].resolved_value
    assert (conflicts[0].hub_value, conflicts[0].remote_value) == ([{**WANG, "title": "CTO"}],
                                                                   [WANG, bo])  # fmt: skip
    assert bridge.crm_values(deal)["stakeholders"] == hub
    assert bridge.board_values(card)["stakeholders"] == hub
    assert bridge.sync().plan.rows() == []

"""End to end: a CRM-like memory tool and Asana (the emulator over HTTP) synced by SyncEngine.

People edit Asana through the API as Li Wei (so the bridge sees it in events); the CRM through
its backend. Each test checks what the hub, the CRM and Asana hold afterwards, and the request
counts where they matter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.mapping import MappingSpec, parse_mapping
from bridge.store import Store
from bridge.sync import SyncEngine, SyncReport
from connectors.asana.connector import AsanaConnector
from connectors.memory import MemoryBackend, MemoryConnector
from tests.test_asana_support import BOT_TOKEN, HUMAN, HUMAN_TOKEN, AsanaWorld, world
from tests.test_sync_engine import mapping_text, tool_config

REPO = Path(__file__).resolve().parent.parent
ASANA_MAPPING = REPO / "mappings" / "asana.toml"


class Duo:
    """A CRM (memory) and Asana wired to one store and engine, as ``bridge.runtime`` does."""

    def __init__(
        self,
        db_url: str,
        asana: AsanaWorld,
        policy: str = "newest_wins",
        *,
        mapping: Path = ASANA_MAPPING,
        layout: str = "tasks",
    ) -> None:
        self.asana = asana
        self.crm_backend = MemoryBackend()
        self.crm = MemoryConnector("crm", tool_config(), backend=self.crm_backend)
        if layout == "projects":
            self.tool: AsanaConnector = asana.projects_connector("asana", max_attempts=5)
            self.person = asana.projects_connector("li", token=HUMAN_TOKEN)
        else:
            self.tool = asana.connector("asana", max_attempts=5)
            self.person = asana.person()
        text = mapping.read_text(encoding="utf-8").replace(
            'conflict_policy = "newest_wins"', f'conflict_policy = "{policy}"'
        )
        self.specs: dict[str, MappingSpec] = {
            "crm": parse_mapping(
                mapping_text(policy), schema=self.crm.discover(), connector="memory"
            ),
            "asana": parse_mapping(
                text, source=str(mapping), schema=self.tool.discover(), connector="asana"
            ),
        }
        self.store = Store.open(db_url)
        self.engine = SyncEngine(
            self.store,
            {"crm": self.crm, "asana": self.tool},  # type: ignore[dict-item]
            self.specs,
        )

    def sync(self, **options: Any) -> SyncReport:
        return self.engine.run(**options)

    def close(self) -> None:
        self.store.close()

    # -- people

    def crm_add(self, **values: Any) -> str:
        canonical = {"stage": "lead", "customer.name": "Acme"}
        canonical.update({k.replace("__", "."): v for k, v in values.items()})
        return self.crm_backend.add(self.specs["crm"].to_remote(canonical), actor=HUMAN)

    def crm_edit(self, ref: str, **values: Any) -> None:
        changes = {k.replace("__", "."): v for k, v in values.items()}
        self.crm_backend.edit(ref, self.specs["crm"].to_remote(changes), actor=HUMAN)

    def asana_edit(self, ref: str, **remote: Any) -> None:
        self.person.update(ref, remote, expected_version=None)

    # -- reading

    def crm_values(self, ref: str) -> dict[str, Any]:
        rec = self.crm.get(ref)
        assert rec is not None
        return self.specs["crm"].to_canonical(rec)

    def asana_values(self, ref: str) -> dict[str, Any]:
        rec = self.tool.get(ref)
        assert rec is not None
        return self.specs["asana"].to_canonical(rec)

    def ref_of(self, name: str, project_id: str) -> str:
        refs = [lk.ref for lk in self.store.links_for_project(project_id) if lk.connector == name]
        assert len(refs) == 1, f"{project_id} has {len(refs)} links in {name}"
        return refs[0]

    def project_of(self, name: str, ref: str) -> str:
        link = self.store.get_link(name, ref)
        assert link is not None and link.live, f"{name}:{ref} is not linked"
        return link.project_id

    def twin(self, name: str, ref: str, other: str) -> str:
        return self.ref_of(other, self.project_of(name, ref))

    def assert_converged(self) -> None:
        shared = self.specs["crm"].pushed_paths & self.specs["asana"].pushed_paths
        shared -= {"amount"}  # compared below: the CRM keeps a currency field
        for p in self.store.list_projects():
            a = self.asana_values(self.ref_of("asana", p["id"]))
            c = self.crm_values(self.ref_of("crm", p["id"]))
            for path in sorted(shared):
                assert a[path] == c[path], (p["id"], path, a[path], c[path])
            assert a["amount"] == c["amount"]


@pytest.fixture
def asana() -> Iterator[AsanaWorld]:
    yield from world(tasks=3)


@pytest.fixture
def duo(tmp_path: Path, asana: AsanaWorld) -> Iterator[Duo]:
    d = Duo(f"sqlite:///{tmp_path / 'store.db'}", asana)
    yield d
    d.close()


USD = {"amount": "1200", "currency": "USD"}


def ok(report: SyncReport) -> SyncReport:
    assert report.ok, {n: r.error for n, r in report.connectors.items()}
    return report


# --------------------------------------------------------------------------- creates, updates


def test_creates_go_both_ways_and_converge(duo: Duo) -> None:
    ref = duo.crm_add(name="Acme rollout", stage="proposal", amount=USD, priority="high",
                      owner={"name": "Li Wei", "email": HUMAN})  # fmt: skip
    ok(duo.sync())
    task = duo.twin("crm", ref, "asana")
    got = duo.asana_values(task)
    assert (got["name"], got["stage"], got["priority"]) == ("Acme rollout", "proposal", "high")
    assert got["amount"] == USD
    assert got["owner"]["email"] == HUMAN
    record = duo.tool.get(task)
    assert record is not None and record.stamp == duo.project_of("crm", ref)
    st = duo.asana.state
    assert st.tasks[task]["memberships"] == [
        (duo.asana.seeded.pipeline, duo.asana.section("Proposal"))
    ]
    for seeded in duo.asana.seeded.tasks:  # Asana's own tasks reached the CRM
        assert duo.crm_values(duo.twin("asana", seeded, "crm"))["name"] == st.tasks[seeded]["name"]
    ok(duo.sync())
    duo.assert_converged()


def test_updates_and_section_moves_flow_both_ways(duo: Duo) -> None:
    ref = duo.crm_add(name="Globex pilot", stage="lead", amount=USD)
    ok(duo.sync())
    task = duo.twin("crm", ref, "asana")
    duo.asana_edit(task, Section="Negotiation", Amount=5000.0)
    ok(duo.sync())
    assert duo.crm_values(ref)["stage"] == "negotiation"
    assert duo.crm_values(ref)["amount"] == {"amount": "5000", "currency": "USD"}
    duo.crm_edit(ref, stage="signing")
    ok(duo.sync())
    assert duo.asana.state.tasks[task]["memberships"][0][1] == duo.asana.section("Signed")
    hub = duo.store.get_project(duo.project_of("crm", ref))
    assert hub is not None and hub["stage"] == "signing"
    ok(duo.sync())
    duo.assert_converged()


def test_custom_field_edits_of_every_type_reach_the_hub(duo: Duo) -> None:
    task = duo.asana.seeded.tasks[0]
    ok(duo.sync())
    duo.asana_edit(
        task,
        Priority="Urgent",
        Region=["APAC", "Americas"],
        Team=["bob.lee@example.com"],
        **{"Close date": "2026-12-24", "Probability": 75, "Project number": "SP-9"},
    )
    ok(duo.sync())
    hub = duo.store.get_project(duo.project_of("asana", task))
    assert hub is not None
    assert (hub["priority"], hub["expected_close_date"], hub["probability"], hub["code"]) == (
        "critical", "2026-12-24", 75, "SP-9",
    )  # fmt: skip
    assert hub["custom"]["regions"] == ["APAC", "Americas"]
    assert hub["custom"]["team"] == ["bob.lee@example.com"]
    crm = duo.crm_values(duo.twin("asana", task, "crm"))
    assert (crm["priority"], crm["expected_close_date"]) == ("critical", "2026-12-24")


def test_subtasks_and_comments_round_trip(duo: Duo) -> None:
    task = duo.asana.seeded.tasks[1]
    ok(duo.sync())
    user = duo.asana.seeded.users[HUMAN]
    duo.asana.emulator.request("POST", f"/tasks/{task}/stories", user=user, data={"text": "Met"})
    ok(duo.sync())
    hub = duo.store.get_project(duo.project_of("asana", task))
    assert hub is not None
    assert hub["actions"][-1]["what"] == "Met" and hub["actions"][-1]["by"] == HUMAN
    assert [t["title"] for t in hub["tasks"]] == [
        s["name"]
        for s in (duo.asana.state.tasks[g] for g in duo.asana.state.tasks[task]["subtasks"])
    ]
    before = len(duo.asana.state.stories)
    ok(duo.sync())
    assert len(duo.asana.state.stories) == before, "a comment was written back as a duplicate"


# --------------------------------------------------------------------------- conflicts


def test_a_conflict_with_review_is_queued(tmp_path: Path, asana: AsanaWorld) -> None:
    duo = Duo(f"sqlite:///{tmp_path / 'review.db'}", asana, policy="review")
    try:
        ref = duo.crm_add(name="Initech", stage="lead", amount=USD)
        ok(duo.sync())
        task = duo.twin("crm", ref, "asana")
        duo.crm_edit(ref, name="Initech (CRM)")
        duo.asana_edit(task, Name="Initech (Asana)")
        ok(duo.sync())
        pending = duo.store.list_conflicts(True, project_id=duo.project_of("crm", ref))
        assert [c.field for c in pending] == ["name"]
        assert {pending[0].hub_value, pending[0].remote_value} == {
            "Initech (CRM)",
            "Initech (Asana)",
        }
    finally:
        duo.close()


def test_a_conflict_with_newest_wins_takes_the_later_edit(duo: Duo) -> None:
    ref = duo.crm_add(name="Hooli", stage="lead", amount=USD)
    ok(duo.sync())
    task = duo.twin("crm", ref, "asana")
    duo.crm_edit(ref, name="Hooli (CRM, earlier)")
    duo.asana_edit(task, Name="Hooli (Asana, later)")
    ok(duo.sync())
    ok(duo.sync())
    assert duo.crm_values(ref)["name"] == duo.asana_values(task)["name"] == "Hooli (Asana, later)"


# --------------------------------------------------------------------------- failures


def test_an_expired_sync_token_is_a_census_without_duplicates(duo: Duo) -> None:
    duo.crm_add(name="Wayne", stage="lead", amount=USD)
    ok(duo.sync())
    ok(duo.sync())
    links = len(duo.store.links_for_connector("asana"))
    duo.asana.state.expire_sync_tokens()
    duo.asana_edit(duo.asana.seeded.tasks[2], Name="Renamed while the token expired")
    controls = duo.asana.emulator.controls
    controls.reset()
    ok(duo.sync())
    assert controls.count("GET", "/api/1.0/events", status=412) == 1
    assert controls.count("GET", "/api/1.0/tasks") == 1  # the census: 4 tasks, one page
    assert len(duo.store.links_for_connector("asana")) == links
    assert len(duo.asana.state.projects[duo.asana.seeded.pipeline]["tasks"]) == links
    crm = duo.crm_values(duo.twin("asana", duo.asana.seeded.tasks[2], "crm"))
    assert crm["name"] == "Renamed while the token expired"
    ok(duo.sync())
    duo.assert_converged()


def test_a_429_storm_is_ridden_out(duo: Duo) -> None:
    duo.crm_add(name="Stark", stage="lead", amount=USD)
    duo.asana.emulator.controls.fail(429, times=4, retry_after=0)
    ok(duo.sync())
    assert duo.tool.requests.snapshot().rate_limited == 4
    ok(duo.sync())
    duo.assert_converged()
    assert len(duo.asana.state.projects[duo.asana.seeded.pipeline]["tasks"]) == 4


def test_expired_credentials_fail_the_cycle_and_unlink_nothing(duo: Duo) -> None:
    ok(duo.sync())
    links = len(duo.store.links_for_connector("asana"))
    duo.asana.emulator.revoke(BOT_TOKEN)
    report = duo.sync()
    assert report.connectors["asana"].status == "failed"
    assert "credentials" in (report.connectors["asana"].error or "")
    assert BOT_TOKEN not in (report.connectors["asana"].error or "")
    assert report.connectors["crm"].status == "ok"
    assert len(duo.store.links_for_connector("asana")) == links
    report = duo.sync(full=True)
    assert report.connectors["asana"].status == "failed"
    assert len(duo.store.links_for_connector("asana")) == links


def test_malformed_and_unmappable_tasks_are_quarantined(duo: Duo) -> None:
    st, seeded = duo.asana.state, duo.asana.seeded
    bad = seeded.tasks[0]
    st.tasks[bad]["name"] = None
    blocked = st.add_section(seeded.pipeline, "Blocked")
    odd = seeded.tasks[1]
    duo.asana.emulator.request(
        "POST", f"/sections/{blocked}/addTask", user=seeded.bot, data={"task": odd}
    )
    ok(duo.sync())
    held = {q.ref: q.reason for q in duo.store.list_quarantine("asana")}
    assert set(held) == {bad, odd}
    assert "malformed task" in held[bad]
    assert "Blocked" in held[odd]
    assert duo.store.get_link("asana", seeded.tasks[2]) is not None


# --------------------------------------------------------------------------- request counts


def test_a_quiet_cycle_costs_one_asana_request(duo: Duo) -> None:
    duo.crm_add(name="Umbrella", stage="lead", amount=USD)
    ok(duo.sync())
    ok(duo.sync())  # reads back the bridge's own writes (echoes): no-ops
    controls = duo.asana.emulator.controls
    controls.reset()
    before = duo.tool.requests.snapshot().total
    report = ok(duo.sync())
    assert report.plan.steps == [] or all(
        s.action == "update_project" and not s.changes for s in report.plan.steps
    )
    assert controls.count() == 1
    assert controls.count("GET", "/api/1.0/events") == 1
    assert duo.tool.requests.snapshot().total - before == 1

"""The state store, on every backend: a SQLite temp file and PostgreSQL (``conftest.pg_url()``).

Each PostgreSQL test gets a schema of its own (search_path set through the URL), dropped after,
so tests neither collide nor leave anything behind. An unreachable server fails the tests.
"""

from __future__ import annotations

import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bridge.model import Money, Person, SalesProject, get_path
from bridge.secrets import register_secret
from bridge.store import (
    Event,
    LinkConflict,
    NewLink,
    NotFound,
    SchemaMismatch,
    Store,
    StoreError,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from bridge.store import schema as tables
from connectors.base import Cursor
from tests.conftest import pg_url

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CST = timezone(timedelta(hours=8))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'salesbridge.db'}"
        return
    base = pg_url()
    if base is None:
        pytest.skip("PostgreSQL store tests skipped (SALESBRIDGE_SKIP_POSTGRES=1)")
    schema = f"sbtest_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(base)
    try:
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            shown = sa.make_url(base).render_as_string(hide_password=True)
            pytest.fail(
                f"PostgreSQL at {shown} is unreachable: {exc.orig}. Start it, point "
                "SALESBRIDGE_TEST_PG_URL at one, or set SALESBRIDGE_SKIP_POSTGRES=1 to skip."
            )
        try:
            url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


def project(**kw: Any) -> SalesProject:
    defaults: dict[str, Any] = {
        "name": "Acme rollout",
        "team": "east",
        "stage": "qualification",
        "owner": Person(name="Li Lei", email="Li.Lei@Example.com"),
        "amount": Money(amount=Decimal("1234567.89"), currency="CNY"),
        "updated_at": datetime(2026, 2, 1, 17, 30, tzinfo=CST),
    }
    return SalesProject(**(defaults | kw))


def tables_in(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- SQLite file


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "state.db"
    with Store.open(f"sqlite:///{path}") as s:
        s.set_meta("probe", 1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for side in path.parent.glob("state.db-*"):  # -wal / -shm follow the database's mode
            assert stat.S_IMODE(side.stat().st_mode) == 0o600, side
        engine = make_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
        finally:
            engine.dispose()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_existing_sqlite_file_is_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with Store.open(url) as s:
        s.set_meta("k", "v")
    with Store.open(url) as s:
        assert s.get_meta("k") == "v"


def test_in_memory_sqlite_works() -> None:
    with Store.open("sqlite://") as s:
        s.put_project(project(id="sb-1"))
        assert s.current_revision() == "0004"
        assert s.get_project("sb-1") is not None


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported database"):
        make_engine("mysql://user:secret@localhost/db")


# --------------------------------------------------------------------------- migrations


def test_migrations_upgrade_an_empty_database_to_head(db_url: str) -> None:
    assert current_revision(db_url) is None
    assert upgrade(db_url) == head_revision() == "0004"
    assert current_revision(db_url) == "0004"
    assert upgrade(db_url) == "0004"  # repeatable
    assert {
        "projects",
        "links",
        "bases",
        "cursors",
        "events",
        "conflicts",
        "quarantine",
        "violations",
        "violation_history",
        "sync_runs",
        "alerts",
        "meta",
    } <= tables_in(db_url)


def test_migrations_match_the_table_definitions(db_url: str) -> None:
    """schema.py and the migrations describe the same schema (no forgotten migration)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, tables.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_migrations_upgrade_a_database_at_the_previous_revision(db_url: str) -> None:
    assert upgrade(db_url, "0001") == "0001"
    assert "alerts" not in tables_in(db_url)
    ts = sa.DateTime(timezone=True)
    engine = make_engine(db_url)
    try:
        # Written with plain SQL, as the 0001 code would have: no head-only column exists yet.
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO projects (id, data, stage, owner, team, status, updated_at)"
                    " VALUES ('sb-1', :data, 'proposal', 'a@x.com', 'east', 'open', :at)"
                ).bindparams(
                    sa.bindparam("data", type_=tables.JSONType), sa.bindparam("at", type_=ts)
                ),
                {"data": {"id": "sb-1", "name": "Old", "amount": {"amount": "10.00"}}, "at": T0},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO links (project_id, connector, ref, version, url, created_at,"
                    " updated_at) VALUES ('sb-1', 'jira', 'S-1', '7', NULL, :at, :at)"
                ).bindparams(sa.bindparam("at", type_=ts)),
                {"at": T0},
            )
            for rule, esc, res in (
                ("open", None, None),
                ("esc", T0 + timedelta(days=1), None),
                ("done", T0 + timedelta(days=1), T0 + timedelta(days=2)),
            ):
                conn.execute(
                    sa.text(
                        "INSERT INTO violations (rule, project_id, period, severity, owner,"
                        " evidence, opened_at, escalated_at, resolved_at)"
                        " VALUES (:rule, 'sb-1', '2026-03', 'high', 'a@x.com', NULL, :o, :e, :r)"
                    ).bindparams(
                        sa.bindparam("o", type_=ts),
                        sa.bindparam("e", type_=ts),
                        sa.bindparam("r", type_=ts),
                    ),
                    {"rule": rule, "o": T0, "e": esc, "r": res},
                )
    finally:
        engine.dispose()

    with Store.open(db_url) as s:  # opening migrates
        assert s.current_revision() == "0004"
        assert s.get_project("sb-1") == {
            "id": "sb-1",
            "name": "Old",
            "amount": {"amount": "10.00"},
        }
        link = s.get_link("jira", "S-1")
        assert link is not None and link.version == "7" and link.created_at == T0
        by_rule = {v.rule: v for v in s.list_violations(open_only=False)}
        assert {r: v.status for r, v in by_rule.items()} == {
            "open": "open",
            "esc": "escalated",
            "done": "resolved",
        }
        history = [(h.action, h.at) for h in s.violation_history(by_rule["done"].id)]
        assert history == [
            ("opened", T0),
            ("escalated", T0 + timedelta(days=1)),
            ("resolved", T0 + timedelta(days=2)),
        ]
        assert [h.action for h in s.violation_history(by_rule["open"].id)] == ["opened"]
        # what 0002 added works
        s.add_alert("jira", "breaker", "tripped")
        assert len(s.open_alerts()) == 1
        assert s.escalate_violation("open", "sb-1", period="2026-03")


def test_migrations_downgrade_and_upgrade_again(db_url: str) -> None:
    with Store.open(db_url) as s:
        s.put_project(project(id="sb-1"))
        s.open_violation("stale", "sb-1", severity="low", at=T0)
        s.escalate_violation("stale", "sb-1", at=T0 + timedelta(days=1))
        s.add_alert("jira", "breaker", "tripped")
    assert downgrade(db_url, "0001") == "0001"
    assert "alerts" not in tables_in(db_url)
    assert "violation_history" not in tables_in(db_url)
    assert "generations" not in tables_in(db_url)
    assert upgrade(db_url) == "0004"
    with Store.open(db_url) as s:  # the status is rebuilt from the timestamps
        [v] = s.list_violations()
        assert v.status == "escalated"
        assert [h.action for h in s.violation_history(v.id)] == ["opened", "escalated"]
    assert downgrade(db_url, "base") is None
    assert "projects" not in tables_in(db_url)


def test_open_refuses_a_database_from_a_newer_salesbridge(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaMismatch, match="newer salesbridge"):
        Store.open(db_url)


def test_open_without_migrating_needs_head(db_url: str) -> None:
    with pytest.raises(SchemaMismatch, match="db upgrade"):
        Store.open(db_url, migrate=False)
    upgrade(db_url, "0001")
    with pytest.raises(SchemaMismatch, match="'0001'"):
        Store.open(db_url, migrate=False)
    upgrade(db_url)
    Store.open(db_url, migrate=False).close()


def test_concurrent_opens_migrate_once(db_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            Store.open(db_url).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert current_revision(db_url) == "0004"


# --------------------------------------------------------------------------- projects


def test_projects_round_trip(store: Store) -> None:
    p = project()
    store.put_project(p)
    got = store.get_project(p.id)
    assert got == p.to_json()
    assert got is not None
    assert got["amount"] == {"amount": "1234567.89", "currency": "CNY"}  # Decimal as a string
    assert SalesProject.model_validate(got).amount == p.amount
    assert store.get_project("sb-missing") is None

    # a dict holding real Decimals is stored as strings too
    raw = p.to_json() | {"id": "sb-raw", "custom": {"x": Decimal("0.10")}}
    store.put_project(raw)
    assert store.get_project("sb-raw")["custom"] == {"x": "0.10"}  # type: ignore[index]

    # upsert replaces the JSON and the indexed columns
    store.put_project(p.model_copy(update={"stage": "proposal", "name": "Renamed"}))
    assert store.get_project(p.id)["name"] == "Renamed"  # type: ignore[index]
    assert [x["id"] for x in store.list_projects(stage="proposal")] == [p.id]
    assert [x["id"] for x in store.list_projects(stage="qualification")] == ["sb-raw"]


def test_projects_filters_streaming_and_tombstones(store: Store) -> None:
    ps = [
        project(
            id=f"sb-{i:04d}",
            team="east" if i % 2 else "west",
            status="won" if i % 5 == 0 else "open",
        )
        for i in range(25)
    ]
    assert store.put_projects(ps) == 25
    assert store.put_projects([]) == 0
    everything = store.list_projects(page_size=4)
    assert isinstance(everything, Iterator)
    assert [x["id"] for x in everything] == [p.id for p in ps]
    assert store.count_projects() == 25
    assert store.count_projects(team="east") == 12
    assert {x["id"] for x in store.list_projects(team="west", status="won", page_size=2)} == {
        "sb-0000",
        "sb-0010",
        "sb-0020",
    }
    assert len(list(store.list_projects(owner="LI.LEI@example.com"))) == 25  # case-insensitive

    assert store.tombstone_project("sb-0003", at=T0)
    assert not store.tombstone_project("sb-0003")  # already
    assert store.tombstoned_at("sb-0003") == T0
    assert store.tombstoned_at("sb-0004") is None
    with pytest.raises(NotFound):
        store.tombstoned_at("sb-nope")
    assert "sb-0003" not in {x["id"] for x in store.list_projects()}
    assert "sb-0003" in {x["id"] for x in store.list_projects(include_tombstoned=True)}
    assert store.get_project("sb-0003") is not None
    assert store.get_project("sb-0003", include_tombstoned=False) is None
    assert store.count_projects() == 24
    store.put_project(ps[3])  # re-putting keeps the tombstone
    assert store.tombstoned_at("sb-0003") == T0
    assert store.restore_project("sb-0003")
    assert not store.restore_project("sb-0003")
    assert store.tombstoned_at("sb-0003") is None
    assert store.count_projects() == 25
    assert set(store.get_projects(["sb-0001", "sb-0002", "sb-x"])) == {"sb-0001", "sb-0002"}


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.put_project(project().to_json() | {"updated_at": "2026-01-01T10:00:00"})
    with pytest.raises((ValueError, sa.exc.StatementError)):
        store.tombstone_project("sb-x", at=datetime(2026, 1, 1))


# --------------------------------------------------------------------------- links


def test_links(store: Store) -> None:
    a, b = project(id="sb-a"), project(id="sb-b")
    store.put_projects([a, b])
    link = store.link("sb-a", "jira", "S-1", "v1", "https://jira/S-1", at=T0)
    assert (link.project_id, link.version, link.url, link.live) == (
        "sb-a",
        "v1",
        "https://jira/S-1",
        True,
    )
    assert link.created_at == T0 and link.created_at.tzinfo is UTC
    assert store.link("sb-a", "jira", "S-1", "v2").version == "v2"  # idempotent, refreshes

    with pytest.raises(LinkConflict, match="already linked to project sb-a"):
        store.link("sb-b", "jira", "S-1")
    with pytest.raises(LinkConflict, match="unlink it"):
        store.link("sb-a", "jira", "S-2")
    store.link("sb-a", "trello", "card-1")  # another connector is fine
    store.link("sb-b", "trello", "S-1")  # the same ref in another connector is fine

    assert [(x.connector, x.ref) for x in store.links_for_project("sb-a")] == [
        ("jira", "S-1"),
        ("trello", "card-1"),
    ]
    assert [x.ref for x in store.links_for_connector("trello")] == ["card-1", "S-1"]
    assert store.count_links("trello") == 2

    assert store.update_link_version("jira", "S-1", "v3")
    assert store.get_link("jira", "S-1").url == "https://jira/S-1"  # type: ignore[union-attr]
    assert store.update_link_version("jira", "S-1", "v4", url=None)
    assert store.get_link("jira", "S-1").url is None  # type: ignore[union-attr]
    assert not store.update_link_version("jira", "nope", "v1")
    store.update_link_versions("trello", {"card-1": "9", "S-1": "10"})
    assert {r: x.version for r, x in store.get_links("trello", ["card-1", "S-1", "x"]).items()} == {
        "card-1": "9",
        "S-1": "10",
    }

    assert store.unlink("jira", "S-1", at=T0)
    assert not store.unlink("jira", "S-1")
    gone = store.get_link("jira", "S-1")
    assert gone is not None and not gone.live and gone.unlinked_at == T0
    assert [x.connector for x in store.links_for_project("sb-a")] == ["trello"]
    assert len(store.links_for_project("sb-a", include_unlinked=True)) == 2
    assert store.count_links("jira") == 0

    # a tombstoned record may be linked again (to any project); the project may link another
    store.link("sb-a", "jira", "S-2")
    revived = store.link("sb-b", "jira", "S-1")
    assert revived.live and revived.project_id == "sb-b" and revived.created_at == link.created_at
    assert store.get_link("jira", "S-404") is None


def test_link_many_and_batch_checks(store: Store) -> None:
    store.put_projects([project(id=f"sb-{i}") for i in range(3)])
    assert store.link_many([NewLink(f"sb-{i}", "asana", f"t{i}", "1") for i in range(3)]) == 3
    assert store.link_many([]) == 0
    with pytest.raises(LinkConflict):
        store.link_many([NewLink("sb-0", "crm", "o1"), NewLink("sb-1", "crm", "o1")])
    with pytest.raises(LinkConflict):
        store.link_many([NewLink("sb-0", "crm", "o1"), NewLink("sb-0", "crm", "o2")])
    assert store.count_links("crm") == 0  # nothing half-done
    assert store.unlink_many("asana", ["t0", "t1", "zz"]) == 2


def test_link_uniqueness_is_enforced_by_the_database(db_url: str) -> None:
    """The (connector, ref) rule holds even for writers that bypass the Store's checks."""
    upgrade(db_url)
    engine = make_engine(db_url)
    row = {
        "project_id": "sb-1",
        "connector": "jira",
        "ref": "S-1",
        "created_at": T0,
        "updated_at": T0,
    }
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(tables.projects),
                {"id": "sb-1", "data": {}, "stage": "lead", "status": "open"},
            )
            conn.execute(
                sa.insert(tables.projects),
                {"id": "sb-2", "data": {}, "stage": "lead", "status": "open"},
            )
            conn.execute(sa.insert(tables.links), row)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(tables.links), row | {"project_id": "sb-2"})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # foreign key
            conn.execute(sa.insert(tables.links), row | {"project_id": "sb-x", "ref": "S-9"})
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- bases, cursors


def test_bases(store: Store) -> None:
    store.put_projects([project(id="sb-1"), project(id="sb-2")])
    assert store.get_bases("sb-1", "jira") == {}
    store.set_bases("sb-1", "jira", {"name": "A", "amount": {"amount": "1.10", "currency": "EUR"}})
    store.set_bases("sb-1", "jira", {"stage": "lead", "custom.region": None})  # merges
    assert store.get_bases("sb-1", "jira") == {
        "name": "A",
        "amount": {"amount": "1.10", "currency": "EUR"},
        "stage": "lead",
        "custom.region": None,
    }
    store.set_bases("sb-1", "jira", {"name": "B"}, replace=True)
    assert store.get_bases("sb-1", "jira") == {"name": "B"}
    store.set_bases("sb-1", "trello", {"probability": Decimal("0.5")})
    assert store.get_bases("sb-1", "trello") == {"probability": "0.5"}

    store.set_bases_many("jira", {"sb-1": {"x": 1}, "sb-2": {"y": [1, "二"]}})
    assert store.get_bases_many("jira", ["sb-1", "sb-2", "sb-3"]) == {
        "sb-1": {"name": "B", "x": 1},
        "sb-2": {"y": [1, "二"]},
    }
    store.clear_bases("sb-1", "jira", paths=["x"])
    assert store.get_bases("sb-1", "jira") == {"name": "B"}
    store.clear_bases("sb-1", "jira")
    assert store.get_bases("sb-1", "jira") == {}
    assert store.get_bases("sb-1", "trello") != {}
    store.clear_bases("sb-1")
    assert store.get_bases("sb-1", "trello") == {}


def test_cursors(store: Store) -> None:
    assert store.get_cursor("jira").empty
    store.save_cursor("jira", Cursor({"": "2026-03-01T09:00:00Z"}))
    store.save_cursor("trello", Cursor({"board-a": "5", "board-b": "7"}))
    assert store.get_cursor("jira") == Cursor({"": "2026-03-01T09:00:00Z"})
    store.save_cursor("trello", store.get_cursor("trello").advanced("board-a", "6"))
    assert store.get_cursor("trello").positions == {"board-a": "6", "board-b": "7"}
    store.save_cursor("trello", Cursor({"board-b": "8"}))  # the cursor is saved whole
    assert store.get_cursor("trello").positions == {"board-b": "8"}
    store.reset_cursor("trello")
    assert store.get_cursor("trello").empty
    assert store.get_cursor("jira").get() == "2026-03-01T09:00:00Z"


def test_cursors_of_several_connectors_in_one_read(store: Store) -> None:
    store.save_cursor("jira", Cursor({"": "2026-03-01T09:00:00Z"}))
    store.save_cursor("trello", Cursor({"board-a": "5", "board-b": "7"}))
    got = store.get_cursors(["trello", "jira", "asana", "jira"])
    assert list(got) == ["trello", "jira", "asana"]
    assert got == {n: store.get_cursor(n) for n in ("trello", "jira", "asana")}
    assert got["asana"].empty
    assert store.get_cursors([]) == {}


# --------------------------------------------------------------------------- events


def test_events(store: Store) -> None:
    store.put_project(project(id="sb-1"))
    run = store.start_run("jira", at=T0)
    at_cst = datetime(2026, 3, 1, 18, 0, tzinfo=CST)  # 10:00 UTC
    n = store.append_events(
        [
            Event(
                project_id="sb-1",
                at=T0 + timedelta(hours=2),
                field="amount",
                old={"amount": Decimal("1.00"), "currency": "USD"},
                new={"amount": "2.00", "currency": "USD"},
                source="jira",
                actor="li.lei@example.com",
                meaningful=True,
                run_id=run,
            ),
            Event(
                project_id="sb-1",
                at=at_cst,
                field="stage",
                old="lead",
                new="proposal",
                source="hub",
                meaningful=False,
            ),
            Event(
                project_id="sb-1",
                at=T0,
                field="stage",
                old=None,
                new="lead",
                source="jira",
                meaningful=True,
            ),
        ]
    )
    assert n == 3
    assert store.append_events([]) == 0
    evs = store.events_for("sb-1")
    assert [e.field for e in evs] == ["stage", "stage", "amount"]  # oldest first
    assert evs[1].at == at_cst and evs[1].at.tzinfo is UTC and evs[1].at.hour == 10
    assert evs[2].old == {"amount": "1.00", "currency": "USD"}
    assert evs[2].run_id == run and evs[2].actor == "li.lei@example.com" and evs[2].meaningful
    assert evs[0].old is None and not evs[1].meaningful
    assert all(e.id is not None for e in evs)
    assert [e.new for e in store.events_for("sb-1", since=at_cst)] == [
        "proposal",
        {"amount": "2.00", "currency": "USD"},
    ]
    assert [e.new for e in store.events_for("sb-1", until=at_cst)] == ["lead"]
    assert len(store.events_for("sb-1", field="stage")) == 2
    assert store.events_for("sb-2") == []
    assert set(store.events_for_projects(["sb-1", "sb-2"])) == {"sb-1"}


# --------------------------------------------------------------------------- conflicts


def test_conflicts(store: Store) -> None:
    store.put_project(project(id="sb-1"))
    first = store.add_conflict(
        "sb-1", "crm", "amount", hub=1, remote=2, base=0, policy="review", at=T0
    )
    again = store.add_conflict("sb-1", "crm", "amount", hub=1, remote=3, base=0, policy="review")
    assert first == again  # one pending conflict per field, refreshed
    other = store.add_conflict("sb-1", "crm", "stage", hub="a", remote="b", base=None)
    assert other != first
    pending = store.list_conflicts()
    assert [(c.field, c.remote_value, c.pending) for c in pending] == [
        ("amount", 3, True),
        ("stage", "b", True),
    ]
    assert pending[0].detected_at == T0 and pending[0].base_value == 0

    done = store.resolve_conflict(first, "remote", by="ops@example.com", at=T0)
    assert (done.resolution, done.resolved_value, done.resolved_at, done.resolved_by) == (
        "remote",
        3,
        T0,
        "ops@example.com",
    )
    assert store.resolve_conflict(other, "value", {"x": Decimal("1.5")}).resolved_value == {
        "x": "1.5"
    }
    assert store.list_conflicts() == []
    assert len(store.list_conflicts(pending_only=False, project_id="sb-1", connector="crm")) == 2
    with pytest.raises(StoreError, match="already resolved"):
        store.resolve_conflict(first, "hub")
    with pytest.raises(ValueError, match="needs the value"):
        store.resolve_conflict(first, "value")
    with pytest.raises(ValueError, match="resolution must be"):
        store.resolve_conflict(first, "pending")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.resolve_conflict(999, "hub")
    # after resolution the same field can conflict again: a new row
    assert store.add_conflict("sb-1", "crm", "amount", hub=5, remote=6, base=3) not in (
        first,
        other,
    )
    assert store.resolve_conflict(store.list_conflicts()[0].id, "hub").resolved_value == 5


# --------------------------------------------------------------------------- quarantine


def test_quarantine_upserts_while_unresolved(store: Store) -> None:
    first = store.quarantine("jira", "S-9", "no name", {"key": "S-9"}, at=T0)
    again = store.quarantine(
        "jira",
        "S-9",
        "bad date",
        {"key": "S-9", "when": datetime(2026, 1, 1, tzinfo=UTC)},
        at=T0 + timedelta(minutes=5),
    )
    assert first == again
    [entry] = store.list_quarantine()
    assert entry.attempts == 2 and entry.reason == "bad date"
    assert entry.first_seen == T0 and entry.last_seen == T0 + timedelta(minutes=5)
    assert entry.payload == {"key": "S-9", "when": "2026-01-01T00:00:00+00:00"}
    store.quarantine("trello", "c1", "odd", object())  # anything unknown is kept as its repr
    assert store.list_quarantine("trello")[0].payload.startswith("<object object")
    store.quarantine("trello", "c1", "odd", {"p": float("nan"), "d": Decimal("1.5")})
    assert store.list_quarantine("trello")[0].payload == {"p": "NaN", "d": "1.5"}
    assert len(store.list_quarantine()) == 2

    assert store.resolve_quarantine(first, at=T0)
    assert not store.resolve_quarantine(first)
    assert [e.ref for e in store.list_quarantine()] == ["c1"]
    newer = store.quarantine("jira", "S-9", "again")  # a new episode after resolution
    assert newer != first and store.list_quarantine("jira")[0].attempts == 1
    assert len(store.list_quarantine("jira", include_resolved=True)) == 2
    assert store.resolve_quarantined("jira", ["S-9", "S-10"]) == 1
    assert store.list_quarantine("jira") == []


def test_free_text_is_redacted(store: Store) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    register_secret(secret)
    run = store.start_run("jira")
    store.finish_run(run, "failed", {"pulled": 0}, f"401 for token {secret}")
    assert secret not in (store.get_run(run).error or "")
    store.add_alert("jira", "auth", f"bad {secret}")
    assert secret not in store.open_alerts()[0].message
    store.quarantine("jira", "S-1", f"reason {secret}")
    assert secret not in store.list_quarantine()[0].reason


# --------------------------------------------------------------------------- violations


def test_violations_are_keyed_and_keep_history(store: Store) -> None:
    store.put_projects([project(id="sb-1"), project(id="sb-2")])
    v, opened = store.open_violation(
        "stale",
        "sb-1",
        period="2026-W10",
        severity="medium",
        owner="a@x.com",
        evidence={"idle_days": 9},
        at=T0,
    )
    assert opened and v.status == "open" and v.opened_at == T0 and v.evidence == {"idle_days": 9}
    v2, opened2 = store.open_violation(
        "stale",
        "sb-1",
        period="2026-W10",
        severity="high",
        owner="a@x.com",
        evidence={"idle_days": 10},
        at=T0 + timedelta(hours=1),
    )
    assert not opened2 and v2.id == v.id
    assert (v2.severity, v2.evidence, v2.opened_at) == ("high", {"idle_days": 10}, T0)
    assert len(store.list_violations()) == 1
    store.open_violation("stale", "sb-1", period="2026-W11", severity="low")  # other period
    store.open_violation("no_owner", "sb-2", severity="low")  # no period
    assert len(store.list_violations(project_id="sb-1")) == 2
    assert [x.project_id for x in store.list_violations(rule="no_owner")] == ["sb-2"]

    assert store.escalate_violation("stale", "sb-1", period="2026-W10", at=T0 + timedelta(days=1))
    assert not store.escalate_violation("stale", "sb-1", period="2026-W10")  # already
    assert store.get_violation(v.id).status == "escalated"
    assert [x.id for x in store.list_violations(status="escalated")] == [v.id]
    assert store.resolve_violation("stale", "sb-1", period="2026-W10", at=T0 + timedelta(days=2))
    assert not store.resolve_violation("stale", "sb-1", period="2026-W10")
    assert not store.resolve_violation("missing", "sb-1")
    assert v.id not in {x.id for x in store.list_violations()}
    done = store.get_violation(v.id)
    assert done.resolved_at == T0 + timedelta(days=2) and not done.is_open
    assert v.id in {x.id for x in store.list_violations(open_only=False)}

    back, reopened = store.open_violation(
        "stale", "sb-1", period="2026-W10", severity="high", at=T0 + timedelta(days=3)
    )
    assert reopened and back.id == v.id and back.status == "open" and back.resolved_at is None
    assert [(h.action, h.at) for h in store.violation_history(v.id)] == [
        ("opened", T0),
        ("escalated", T0 + timedelta(days=1)),
        ("resolved", T0 + timedelta(days=2)),
        ("reopened", T0 + timedelta(days=3)),
    ]
    with pytest.raises(NotFound):
        store.get_violation(12345)


# --------------------------------------------------------------------------- runs, alerts, meta


def test_runs(store: Store) -> None:
    r1 = store.start_run("jira", at=T0)
    r2 = store.start_run("trello", at=T0)
    store.finish_run(
        r1,
        "ok",
        {"pulled": 10, "created": 2, "updated": 3, "conflicts": 1, "quarantined": 0},
        at=T0 + timedelta(seconds=5),
    )
    r3 = store.start_run("jira", at=T0 + timedelta(minutes=5))
    assert store.get_run(r2).status == "running" and store.get_run(r2).finished_at is None
    done = store.get_run(r1)
    assert done.counts["pulled"] == 10 and done.finished_at == T0 + timedelta(seconds=5)
    last = store.last_runs()
    assert {c: r.id for c, r in last.items()} == {"jira": r3, "trello": r2}
    store.finish_run(r3, "breaker", {"pulled": 3}, "7 of 10 linked records vanished")
    assert store.last_runs()["jira"].status == "breaker"
    assert [r.id for r in store.runs("jira")] == [r3, r1]
    assert len(store.runs(limit=1)) == 1
    with pytest.raises(ValueError, match="run status"):
        store.finish_run(r2, "weird")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.finish_run(999, "ok")


def test_alerts(store: Store) -> None:
    a = store.add_alert("jira", "breaker", "7 of 10 vanished", at=T0)
    store.add_alert("jira", "auth", "token expired")
    store.add_alert("crm", "breaker", "tripped")
    assert [x.id for x in store.open_alerts("jira", kind="breaker")] == [a]
    assert store.open_alerts("jira")[0].at == T0
    assert len(store.open_alerts()) == 3
    assert store.clear_alerts("jira", "breaker", at=T0) == 1
    assert [x.kind for x in store.open_alerts("jira")] == ["auth"]
    assert store.clear_alerts("jira") == 1
    assert [x.connector for x in store.open_alerts()] == ["crm"]


def test_meta(store: Store) -> None:
    assert store.get_meta("nope", "dflt") == "dflt"
    store.set_meta("demo", {"seeded": True, "n": 3})
    store.set_meta("demo", {"seeded": False})
    assert store.get_meta("demo") == {"seeded": False}


# --------------------------------------------------------------------------- transactions


def test_transaction_commits_together_or_not_at_all(store: Store, db_url: str) -> None:
    with store.transaction():
        store.put_project(project(id="sb-1"))
        store.link("sb-1", "jira", "S-1")
        assert store.in_transaction
        assert store.get_link("jira", "S-1") is not None  # reads see own writes
    assert not store.in_transaction

    with pytest.raises(RuntimeError), store.transaction():
        store.put_project(project(id="sb-2"))
        store.save_cursor("jira", Cursor({"": "x"}))
        raise RuntimeError("crash mid-step")
    assert store.get_project("sb-2") is None
    assert store.get_cursor("jira").empty

    with store.transaction():  # nested: a savepoint
        store.set_meta("outer", 1)
        with pytest.raises(RuntimeError), store.transaction():
            store.set_meta("inner", 1)
            raise RuntimeError
        assert store.get_meta("inner") is None
    assert store.get_meta("outer") == 1

    # a failing statement inside leaves the store usable (and rolls the unit back)
    with pytest.raises(LinkConflict), store.transaction():
        store.put_project(project(id="sb-3"))
        store.link("sb-3", "jira", "S-1")
    assert store.get_project("sb-3") is None

    with Store.open(db_url) as other:  # another process sees committed work only
        assert other.get_project("sb-1") is not None
        assert other.get_link("jira", "S-1") is not None


def test_store_is_usable_from_threads(store: Store) -> None:
    store.put_projects([project(id=f"sb-{i}") for i in range(8)])
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                with store.transaction():
                    store.set_bases(f"sb-{i}", "jira", {f"f{j}": j})
                    store.append_events(
                        [
                            Event(
                                project_id=f"sb-{i}",
                                at=T0,
                                field=f"f{j}",
                                old=None,
                                new=j,
                                source="jira",
                                meaningful=True,
                            )
                        ]
                    )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert all(len(store.get_bases(f"sb-{i}", "jira")) == 5 for i in range(8))
    assert (
        sum(len(v) for v in store.events_for_projects([f"sb-{i}" for i in range(8)]).values()) == 40
    )


# --------------------------------------------------------------------------- push planning reads


def test_linked_projects_in_chunks_with_bases_and_picked_values(store: Store) -> None:
    """Push planning's reads: live links of a tool with their projects and bases, a chunk at
    a time; with ``paths`` the database picks those values out of each project's JSON."""
    for i in range(7):
        p = project(
            id=f"p{i}",
            name=f'Deal "{i}" ü',
            probability=None if i == 0 else i * 10,
            custom={"flag": i % 2 == 0, "tags": ["a", "b"], "ratio": 0.1 + 0.2},
        )
        store.put_project(p)
        store.link(f"p{i}", "crm", f"r{i}", version=str(i))
    store.set_bases("p1", "crm", {"name": "old", "custom.flag": False})
    store.set_bases("p1", "board", {"name": "elsewhere"})
    store.unlink("crm", "r2")
    store.tombstone_project("p3")
    store.link("p0", "board", "b0")

    chunks = list(store.linked_projects("crm", chunk=2))
    assert [len(c) for c in chunks] == [2, 2, 2]  # r2 is unlinked
    items = {i.link.ref: i for c in chunks for i in c}
    assert sorted(items) == ["r0", "r1", "r3", "r4", "r5", "r6"]
    assert items["r1"].bases == {"name": "old", "custom.flag": False}
    assert items["r0"].bases == {} and items["r3"].project is None  # tombstoned
    assert items["r4"].project == store.get_project("p4")

    paths = [
        "name",
        "probability",
        "owner.email",
        "customer.name",
        "amount",
        "custom.flag",
        "custom.tags",
        "custom.ratio",
        "custom.missing",
        "stakeholders",
    ]
    picked = {i.link.ref: i for c in store.linked_projects("crm", paths=paths) for i in c}
    assert picked.keys() == items.keys()
    for ref, item in picked.items():
        assert item.project is None and item.bases == items[ref].bases
        full = items[ref].project
        if full is None:
            assert item.values is None
            continue
        assert item.values == {p: get_path(full, p) for p in paths}, ref
        assert type(item.values["custom.flag"]) is bool
    one = {i.link.ref: i.values for c in store.linked_projects("crm", paths=["name"]) for i in c}
    assert one["r5"] == {"name": 'Deal "5" ü'}


def test_pending_conflict_fields_and_link_queries(store: Store) -> None:
    for pid in ("a", "b", "c"):
        store.put_project(project(id=pid))
    store.link("a", "crm", "ra")
    store.link("b", "crm", "rb")
    store.unlink("crm", "rb")
    store.add_conflict("a", "crm", "name", hub="x", remote="y", base=None)
    store.add_conflict("a", "crm", "stage", hub="x", remote="y", base=None)
    done = store.add_conflict("b", "crm", "name", hub="x", remote="y", base=None)
    store.resolve_conflict(done, "hub", "x")
    store.add_conflict("c", "board", "name", hub="x", remote="y", base=None)
    assert store.pending_conflict_fields("crm") == {"a": {"name", "stage"}}
    assert store.pending_conflict_fields("crm", ["b", "c"]) == {}
    assert store.pending_conflict_fields("board", ["a", "c"]) == {"c": {"name"}}

    assert store.linked_project_ids("crm", ["a", "b", "c"]) == {"a", "b"}
    assert store.linked_project_ids("crm", ["a", "b", "c"], include_unlinked=False) == {"a"}
    assert [p["id"] for p in store.projects_without_link("crm", page_size=1)] == ["c"]
    store.tombstone_project("c")
    assert list(store.projects_without_link("crm")) == []
    assert [p["id"] for p in store.projects_without_link("board")] == ["a", "b"]


def test_linked_projects_differing_leaves_out_only_projects_equal_to_their_bases(
    store: Store,
) -> None:
    """``differing=True`` drops, in the database, exactly the projects push planning would
    find nothing to push for; never one with a value that differs from its base."""
    paths = ["name", "probability", "customer.name", "amount", "custom.flag", "custom.tags"]

    def agreed(p: SalesProject) -> dict[str, Any]:
        data = p.to_json()
        return {path: get_path(data, path) for path in paths}

    cases: dict[str, tuple[SalesProject, dict[str, Any] | None]] = {}
    base = project(custom={"flag": True, "tags": ["a"]})
    cases["same"] = (base.model_copy(update={"id": "same"}), agreed(base))
    no_nulls = {k: v for k, v in agreed(base).items() if v is not None}  # probability is None
    cases["null_missing"] = (base.model_copy(update={"id": "null_missing"}), no_nulls)
    cases["renamed"] = (base.model_copy(update={"id": "renamed", "name": "New"}), agreed(base))
    cases["flag"] = (
        base.model_copy(update={"id": "flag", "custom": {"flag": False, "tags": ["a"]}}),
        agreed(base),
    )
    cases["no_bases"] = (base.model_copy(update={"id": "no_bases"}), None)
    cases["key_missing"] = (
        base.model_copy(update={"id": "key_missing"}),
        {k: v for k, v in agreed(base).items() if k != "name"},
    )
    cases["gone"] = (base.model_copy(update={"id": "gone", "name": "Gone"}), agreed(base))
    for i, (pid, (p, bases)) in enumerate(cases.items()):
        store.put_project(p)
        store.link(pid, "crm", f"r{i}")
        if bases is not None:
            store.set_bases(pid, "crm", bases, replace=True)
    store.tombstone_project("gone")

    kept = {
        i.link.project_id: i.values
        for c in store.linked_projects("crm", paths=paths, differing=True, chunk=2)
        for i in c
    }
    assert sorted(kept) == ["flag", "key_missing", "no_bases", "renamed"]
    for pid, values in kept.items():
        assert values == agreed(cases[pid][0])
    with pytest.raises(ValueError):
        next(store.linked_projects("crm", differing=True))

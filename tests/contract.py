"""The contract every connector's tests inherit (vdirsyncer's ``StorageTests``).

A connector's test module subclasses :class:`ConnectorContract` in a class named ``Test...``,
sets ``kind`` and the editable field, and provides the hooks: a ``connector`` fixture, valid
``sample_fields()`` and ``remote_edit()`` (a change made in the tool, out of the bridge's sight)::

    class TestMemoryConnector(ConnectorContract):
        kind = "memory"
        editable_field = "title"
        editable_values = ("Acme rollout", "Acme rollout, phase 2")

        @pytest.fixture
        def connector(self) -> Iterator[Connector[Any]]:
            with MemoryConnector("memory", MemoryConfig()) as connector:
                yield connector

        def sample_fields(self) -> dict[str, Any]:
            return {"title": "Acme rollout", "status": "proposal"}

        def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]):
            connector.backend.edit(ref, fields, actor="alice")

The tests only assert about records they create, so a connector may run them against an
emulator that holds other data. ``tests/test_connector_registry.py`` fails for any registered
connector kind without such a class.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from connectors.base import Connector, ConnectorError, Cursor, Page, RemoteRecord, StaleVersion


def new_stamp() -> str:
    return f"sb-{uuid.uuid4()}"


def refs(records: Iterable[RemoteRecord]) -> set[str]:
    return {r.ref for r in records}


def versions(records: Iterable[RemoteRecord]) -> set[tuple[str, str]]:
    return {(r.ref, r.version) for r in records}


class ConnectorContract:
    """Tests every connector passes. Not collected itself: its name lacks the ``Test`` prefix."""

    kind: ClassVar[str]
    """The entry-point name of the connector under test."""
    editable_field: ClassVar[str]
    editable_values: ClassVar[tuple[Any, Any]]
    """Two different valid values of ``editable_field``."""
    detects_stale_versions: ClassVar[bool] = True
    """False for a tool that cannot refuse a write against an old version."""
    supports_archive: ClassVar[bool] = False
    keeps_history: ClassVar[bool] = False
    unknown_ref: ClassVar[str] = "no-such-record-404"
    """A well-formed ref that names no record."""
    clock_resolution: ClassVar[float] = 0.01
    """Seconds to wait so that two changes get different server times (see ``pause``)."""

    # -- hooks the subclass provides

    @pytest.fixture
    def connector(self) -> Connector[Any]:
        raise NotImplementedError("the connector's test class provides a `connector` fixture")

    def sample_fields(self) -> dict[str, Any]:
        """Valid remote fields for a new record; they must include ``editable_field``."""
        raise NotImplementedError

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        """Change ``fields`` of record ``ref`` in the tool itself, as a person would."""
        raise NotImplementedError

    def server_now(self, connector: Connector[Any]) -> datetime:
        """The tool's current time: what the engine takes as the signpost of a cycle."""
        return datetime.now(UTC)

    def pause(self) -> None:
        """Let the tool's clock move on, so that the next change is later than the last."""
        time.sleep(self.clock_resolution)

    def cursor_time(self, position: str) -> datetime | None:
        """The time a cursor position stands for, or None if it is not a time."""
        try:
            at = datetime.fromisoformat(position)
        except ValueError:
            return None
        return at if at.tzinfo else None

    def assert_fields_match(self, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
        """Fields written come back the same; override where a tool normalises values."""
        for key, value in sent.items():
            assert got.get(key) == value, f"{key}: sent {value!r}, got {got.get(key)!r}"

    # -- helpers

    def fields(self, value_index: int = 0) -> dict[str, Any]:
        return {**self.sample_fields(), self.editable_field: self.editable_values[value_index]}

    def create(self, connector: Connector[Any]) -> tuple[RemoteRecord, str]:
        stamp = new_stamp()
        return connector.create(self.fields(), stamp=stamp), stamp

    def pull_pages(
        self, connector: Connector[Any], cursor: Cursor, *, full: bool = False
    ) -> tuple[list[Page], Cursor]:
        """Every page of a pull with the signpost at the tool's current time, and the cursor
        to store after the last page."""
        pages = list(connector.pull(cursor, signpost=self.server_now(connector), full=full))
        for page in pages:
            cursor = page.cursor or cursor
        return pages, cursor

    def pull_records(
        self, connector: Connector[Any], cursor: Cursor, *, full: bool = False
    ) -> tuple[list[RemoteRecord], Cursor]:
        pages, cursor = self.pull_pages(connector, cursor, full=full)
        return [r for p in pages for r in p.records], cursor

    # -- the contract

    def test_check_describes_the_account_in_one_line(self, connector: Connector[Any]) -> None:
        text = connector.check()
        assert isinstance(text, str)
        assert text.strip()
        assert "\n" not in text.strip()

    def test_discover_finds_the_fields_records_use(self, connector: Connector[Any]) -> None:
        self.create(connector)
        schema = connector.discover()
        missing = [name for name in self.fields() if not schema.resolve(name)]
        assert not missing, f"not discovered: {missing}; found {[f.id for f in schema.fields]}"

    def test_create_then_get_round_trips_fields_and_stamp(self, connector: Connector[Any]) -> None:
        created, stamp = self.create(connector)
        assert created.ref
        assert created.version
        assert created.stamp == stamp
        assert not created.deleted
        self.assert_fields_match(self.fields(), created.fields)
        got = connector.get(created.ref)
        assert got is not None
        assert (got.ref, got.version, got.stamp) == (created.ref, created.version, stamp)
        self.assert_fields_match(self.fields(), got.fields)

    def test_find_by_stamp_finds_only_the_stamped_record(self, connector: Connector[Any]) -> None:
        created, stamp = self.create(connector)
        self.create(connector)
        found = connector.find_by_stamp(stamp)
        assert found is not None
        assert (found.ref, found.stamp) == (created.ref, stamp)
        assert connector.find_by_stamp(new_stamp()) is None

    def test_get_unknown_ref_returns_none(self, connector: Connector[Any]) -> None:
        assert connector.get(self.unknown_ref) is None

    @pytest.mark.parametrize("full", [True, False], ids=["full", "incremental"])
    def test_created_record_is_pulled_from_an_empty_cursor(
        self, connector: Connector[Any], full: bool
    ) -> None:
        created, stamp = self.create(connector)
        self.pause()
        records, _ = self.pull_records(connector, Cursor(), full=full)
        mine = [r for r in records if r.ref == created.ref]
        assert mine, f"pull(full={full}) missed {created.ref}"
        assert mine[-1].stamp == stamp
        assert not mine[-1].deleted
        self.assert_fields_match(self.fields(), mine[-1].fields)

    def test_incremental_pull_resumes_at_its_cursor(self, connector: Connector[Any]) -> None:
        created, _ = self.create(connector)
        self.pause()
        first, cursor = self.pull_records(connector, Cursor())
        assert created.ref in refs(first)
        self.pause()
        again, cursor = self.pull_records(connector, cursor)
        assert not versions(again) - versions(first), "nothing changed, yet a pull found news"

        self.remote_edit(connector, created.ref, {self.editable_field: self.editable_values[1]})
        self.pause()
        after, _ = self.pull_records(connector, cursor)
        news = [r for r in after if (r.ref, r.version) not in versions(first) | versions(again)]
        assert refs(news) == {created.ref}
        assert news[-1].version != created.version
        assert news[-1].fields[self.editable_field] == self.editable_values[1]

    def test_cursors_never_pass_the_signpost(self, connector: Connector[Any]) -> None:
        before, _ = self.create(connector)
        self.pause()
        signpost = self.server_now(connector)
        self.pause()
        after, _ = self.create(connector)
        cursor = Cursor()
        seen: list[RemoteRecord] = []
        for page in connector.pull(cursor, signpost=signpost):
            seen.extend(page.records)
            cursor = page.cursor or cursor
            for position in cursor.positions.values():
                at = self.cursor_time(position)
                assert at is None or at <= signpost, f"cursor {position} is past {signpost}"
        assert before.ref in refs(seen)
        later, _ = self.pull_records(connector, cursor)
        assert after.ref in refs(later), "a change after the signpost was skipped for good"

    def test_resuming_at_any_page_cursor_loses_no_record(self, connector: Connector[Any]) -> None:
        wanted = {self.create(connector)[0].ref for _ in range(5)}
        self.pause()
        pages, _ = self.pull_pages(connector, Cursor())
        seen: set[str] = set()
        for page in pages:
            seen |= refs(page.records)
            if page.cursor is not None:  # a crash here resumes at page.cursor
                rest, _ = self.pull_records(connector, page.cursor)
                assert not wanted - seen - refs(rest), f"lost resuming at {page.cursor}"
        assert wanted <= seen

    def test_update_changes_the_field_and_the_version(self, connector: Connector[Any]) -> None:
        created, _ = self.create(connector)
        self.pause()
        change = {self.editable_field: self.editable_values[1]}
        updated = connector.update(created.ref, change, expected_version=created.version)
        assert updated.ref == created.ref
        assert updated.version != created.version
        self.assert_fields_match({**self.fields(), **change}, updated.fields)
        got = connector.get(created.ref)
        assert got is not None
        assert got.version == updated.version
        self.assert_fields_match({**self.fields(), **change}, got.fields)

    def test_update_against_a_stale_version_is_refused(self, connector: Connector[Any]) -> None:
        if not self.detects_stale_versions:
            pytest.skip(f"{self.kind} cannot tell a stale version")
        created, _ = self.create(connector)
        self.pause()
        self.remote_edit(connector, created.ref, {self.editable_field: self.editable_values[1]})
        with pytest.raises(StaleVersion) as refused:
            connector.update(
                created.ref,
                {self.editable_field: self.editable_values[0]},
                expected_version=created.version,
            )
        assert refused.value.ref == created.ref
        got = connector.get(created.ref)
        assert got is not None
        assert got.fields[self.editable_field] == self.editable_values[1], "refused, yet written"

    def test_update_without_expected_version_overwrites(self, connector: Connector[Any]) -> None:
        created, _ = self.create(connector)
        self.pause()
        self.remote_edit(connector, created.ref, {self.editable_field: self.editable_values[1]})
        change = {self.editable_field: self.editable_values[0]}
        updated = connector.update(created.ref, change, expected_version=None)
        assert updated.fields[self.editable_field] == self.editable_values[0]

    # -- batch updates: only for a connector with ``update_many`` (the engine's batch hook)

    def update_many(
        self,
        connector: Connector[Any],
        changes: Mapping[str, Mapping[str, Any]],
        expected: Mapping[str, str | None],
    ) -> dict[str, RemoteRecord | ConnectorError]:
        batch = getattr(connector, "update_many", None)
        if not callable(batch):
            pytest.skip(f"{self.kind} has no update_many")
        results: dict[str, RemoteRecord | ConnectorError] = batch(changes, expected)
        assert set(results) == set(changes), "update_many must answer for every ref"
        return results

    def test_update_many_returns_the_records_as_get_reads_them(
        self, connector: Connector[Any]
    ) -> None:
        """The version returned is the one the engine stores as the link's: it must be the
        record's current version, or the next update would be refused (or, worse, pass)."""
        if not callable(getattr(connector, "update_many", None)):
            pytest.skip(f"{self.kind} has no update_many")
        created = [self.create(connector)[0] for _ in range(3)]
        self.pause()
        change = {self.editable_field: self.editable_values[1]}
        results = self.update_many(
            connector, {c.ref: change for c in created}, {c.ref: c.version for c in created}
        )
        for c in created:
            result = results[c.ref]
            assert isinstance(result, RemoteRecord), f"{c.ref}: {result!r}"
            assert result.ref == c.ref
            assert result.version and result.version != c.version
            assert result.fields.get(self.editable_field) == self.editable_values[1]
            got = connector.get(c.ref)
            assert got is not None
            assert got.version == result.version, f"{c.ref}: returned {result.version}"
            self.assert_fields_match({**self.fields(), **change}, got.fields)

    def test_update_many_refuses_only_the_record_edited_since(
        self, connector: Connector[Any]
    ) -> None:
        """A person's edit between the bridge's pull and its batch push is not overwritten:
        that ref alone is StaleVersion (deferred by the engine), the others are written."""
        if not callable(getattr(connector, "update_many", None)):
            pytest.skip(f"{self.kind} has no update_many")
        if not self.detects_stale_versions:
            pytest.skip(f"{self.kind} cannot tell a stale version")
        first, edited, last = (self.create(connector)[0] for _ in range(3))
        self.pause()
        self.remote_edit(connector, edited.ref, {self.editable_field: self.editable_values[1]})
        after_edit = connector.get(edited.ref)
        assert after_edit is not None
        self.pause()
        ours = {self.editable_field: self.editable_values[1]}
        theirs = {self.editable_field: self.editable_values[0]}  # would undo the person's edit
        results = self.update_many(
            connector,
            {first.ref: ours, edited.ref: theirs, last.ref: ours},
            {c.ref: c.version for c in (first, edited, last)},
        )
        refused = results[edited.ref]
        assert isinstance(refused, StaleVersion), f"{edited.ref}: {refused!r}"
        assert refused.ref == edited.ref
        got = connector.get(edited.ref)
        assert got is not None
        assert got.fields[self.editable_field] == self.editable_values[1], "refused, yet written"
        assert got.version == after_edit.version, "refused, yet the record changed"
        for c in (first, last):
            result = results[c.ref]
            assert isinstance(result, RemoteRecord), f"{c.ref}: {result!r}"
            now = connector.get(c.ref)
            assert now is not None
            assert now.version == result.version
            assert now.fields[self.editable_field] == self.editable_values[1]

    def test_archived_record_is_gone(self, connector: Connector[Any]) -> None:
        if not self.supports_archive:
            pytest.skip(f"{self.kind} does not archive")
        created, stamp = self.create(connector)
        connector.archive(created.ref)
        connector.archive(created.ref)  # a retried archive is harmless
        assert connector.get(created.ref) is None
        assert connector.find_by_stamp(stamp) is None
        census, _ = self.pull_records(connector, Cursor(), full=True)
        assert created.ref not in refs(r for r in census if not r.deleted)

    def test_history_records_an_update(self, connector: Connector[Any]) -> None:
        if not self.keeps_history:
            pytest.skip(f"{self.kind} keeps no history")
        created, _ = self.create(connector)
        self.pause()
        change = {self.editable_field: self.editable_values[1]}
        connector.update(created.ref, change, expected_version=None)
        entries = [h for h in connector.history(created.ref) if h.field == self.editable_field]
        assert [(h.old, h.new) for h in entries][-1:] == [tuple(self.editable_values)]
        assert all(h.at.tzinfo is not None for h in entries)

    def test_close_is_idempotent(self, connector: Connector[Any]) -> None:
        connector.check()
        connector.close()
        connector.close()

"""Rule tests for ops staff: fixture projects with expected outcomes (``salesbridge rules test``).

A test file (TOML or JSON) names the rule files it tests and lists cases::

    rules = ["../default.toml"]          # relative to this file
    now = 2026-03-30T09:00:00+02:00      # every case's "now", unless the case says otherwise
    timezone = "Europe/Berlin"           # the team calendar (default UTC)
    holidays = [2026-04-03]

    [[cases]]
    name = "negotiation, high priority, silent for 3 business days"
    project = { name = "Acme", stage = "negotiation", priority = "high", ... }
    events = [{ at = 2026-03-25T10:00:00Z, field = "stage", old = "proposal", new = "negotiation" }]
    expect = { tracked = true, fail = ["cadence"], pass = ["proposal.exit.proposal_submitted"] }

``expect`` keys: ``tracked`` (admission), ``fail`` / ``pass`` / ``skip`` / ``error`` (rule ids
that must have that outcome) and ``only_these_fail`` (true: no rule outside ``fail`` fails).
Every mistake in the file is reported at once as file / [[cases]] (case N) key / fix.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import Problem, UserError
from bridge.model import Lifecycle, SalesProject
from bridge.rules.calendar import Calendar
from bridge.rules.engine import Evaluation
from bridge.rules.loader import RulePack, load_rules
from bridge.store.store import Event

__all__ = ["CaseResult", "FixtureReport", "load_fixtures", "run_fixtures"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Event(_Strict):
    at: datetime
    field: str = Field(min_length=1)
    old: Any = None
    new: Any = None
    source: str = "fixture"
    meaningful: bool = True
    actor: str | None = None


class _Expect(_Strict):
    tracked: bool | None = None
    fail: list[str] = Field(default_factory=list)
    pass_: list[str] = Field(default_factory=list, alias="pass")
    skip: list[str] = Field(default_factory=list)
    error: list[str] = Field(default_factory=list)
    only_these_fail: bool = False


class _Case(_Strict):
    name: str = Field(min_length=1)
    now: datetime | None = None
    timezone: str | None = None
    holidays: list[date] | None = None
    project: dict[str, Any]
    events: list[_Event] = Field(default_factory=list)
    expect: _Expect


class _File(_Strict):
    rules: list[str] = Field(default_factory=list)
    now: datetime | None = None
    timezone: str | None = None
    holidays: list[date] = Field(default_factory=list)
    cases: list[dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class Fixture:
    name: str
    project: SalesProject
    events: tuple[Event, ...]
    now: datetime
    calendar: Calendar
    expect: _Expect


@dataclass
class CaseResult:
    name: str
    evaluation: Evaluation
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


@dataclass
class FixtureReport:
    file: str
    pack: RulePack
    cases: list[CaseResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rules": list(self.pack.sources),
            "ok": self.ok,
            "cases": [
                {
                    "name": c.name,
                    "ok": c.ok,
                    "mismatches": c.mismatches,
                    "failed": [r.rule.id for r in c.evaluation.violations],
                }
                for c in self.cases
            ],
        }


def _key(loc: Sequence[int | str], case: int | None) -> str:
    head = f"[[cases]] (case {case + 1}) " if case is not None else ""
    return head + ".".join(str(p) for p in loc)


def _read(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError([Problem(source, "", "file not found; check the path")]) from None
    except UnicodeDecodeError as exc:
        raise UserError(
            [Problem(source, "", f"not UTF-8 text (byte {exc.start}); save it as UTF-8")]
        ) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                [
                    Problem(
                        source,
                        f"line {exc.lineno}, column {exc.colno}",
                        f"JSON syntax error: {exc.msg}; fix that line",
                    )
                ]
            ) from None
        if not isinstance(data, dict):
            raise UserError([Problem(source, "", "the file must hold one JSON object")])
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(
            [Problem(source, "", f"TOML syntax error: {exc}; fix the syntax at that line")]
        ) from None


def _problem(source: str, err: Any, case: int | None, prefix: tuple[str, ...] = ()) -> Problem:
    loc = (*prefix, *err["loc"])
    typ = err["type"]
    if typ == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling"
    elif typ == "missing":
        msg = "required key is missing; add it"
    else:
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        msg = f"{err['msg']}{shown}; fix the value"
    return Problem(source, _key([str(p) for p in loc], case), msg)


def load_fixtures(
    path: Path, *, lifecycle: Lifecycle | None = None, rules: Sequence[Path] | None = None
) -> tuple[RulePack, list[Fixture]]:
    """Read a test file and the rule pack it tests (``rules`` overrides the file's own list;
    neither: the default pack). Raises UserError listing every problem."""
    source = str(path)
    data = _read(path)
    problems: list[Problem] = []
    try:
        top = _File.model_validate(data)
    except ValidationError as exc:
        raise UserError([_problem(source, e, None) for e in exc.errors()]) from None
    files = list(rules) if rules else [path.parent / r for r in top.rules] or None
    pack = load_rules(files, lifecycle=lifecycle)
    fixtures: list[Fixture] = []
    ids = pack.rule_ids
    for i, raw in enumerate(top.cases):
        try:
            case = _Case.model_validate(raw)
        except ValidationError as exc:
            problems += [_problem(source, e, i) for e in exc.errors()]
            continue
        now = case.now or top.now
        if now is None:
            problems.append(
                Problem(
                    source,
                    _key(["now"], i),
                    "no time to evaluate at; set now = 2026-03-30T09:00:00+02:00 at the top "
                    "of the file or in the case",
                )
            )
        if now is not None and now.tzinfo is None:
            problems.append(
                Problem(source, _key(["now"], i), "needs a timezone offset, e.g. +02:00 or Z")
            )
        try:
            project = SalesProject.model_validate(case.project)
        except ValidationError as exc:
            problems += [_problem(source, e, i, ("project",)) for e in exc.errors()]
            project = None
        try:
            cal = Calendar.of(case.timezone or top.timezone, case.holidays or top.holidays)
        except ValueError as exc:
            problems.append(Problem(source, _key(["timezone"], i), str(exc)))
            cal = Calendar()
        expect = case.expect
        for outcome in ("fail", "pass_", "skip", "error"):
            for rid in getattr(expect, outcome):
                if rid not in ids:
                    close = difflib.get_close_matches(rid, ids, n=1)
                    hint = f"did you mean `{close[0]}`? " if close else ""
                    problems.append(
                        Problem(
                            source,
                            _key(["expect", outcome.rstrip("_")], i),
                            f"no rule `{rid}` in {', '.join(pack.sources)}; {hint}"
                            "`salesbridge rules explain` lists the rule ids",
                        )
                    )
        for j, ev in enumerate(case.events):
            if ev.at.tzinfo is None:
                problems.append(
                    Problem(
                        source,
                        _key(["events", str(j + 1), "at"], i),
                        "needs a timezone offset, e.g. 2026-03-25T10:00:00Z",
                    )
                )
        if project is None or now is None or now.tzinfo is None or problems:
            continue
        events = tuple(
            sorted(
                (
                    Event(
                        project_id=project.id,
                        at=e.at.astimezone(UTC),
                        field=e.field,
                        old=e.old,
                        new=e.new,
                        source=e.source,
                        meaningful=e.meaningful,
                        actor=e.actor,
                    )
                    for e in case.events
                ),
                key=lambda e: e.at,
            )
        )
        fixtures.append(Fixture(case.name, project, events, now, cal, expect))
    if problems:
        raise UserError(problems)
    return pack, fixtures


Outcome = Literal["pass", "fail", "skip", "error"]


def run_fixtures(
    path: Path, *, lifecycle: Lifecycle | None = None, rules: Sequence[Path] | None = None
) -> FixtureReport:
    """Evaluate every case of a test file and compare with its expectations."""
    pack, fixtures = load_fixtures(path, lifecycle=lifecycle, rules=rules)
    results = []
    for fx in fixtures:
        ev = pack.evaluate(fx.project, fx.events, fx.now, fx.calendar)
        got = {r.rule.id: r for r in ev.results}
        bad: list[str] = []
        exp = fx.expect
        if exp.tracked is not None and ev.admission.tracked != exp.tracked:
            bad.append(
                f"expected tracked = {str(exp.tracked).lower()}, got "
                f"{str(ev.admission.tracked).lower()} ({ev.admission.reason_in('en')})"
            )
        wanted: list[tuple[Outcome, list[str]]] = [
            ("fail", exp.fail),
            ("pass", exp.pass_),
            ("skip", exp.skip),
            ("error", exp.error),
        ]
        for outcome, rule_ids in wanted:
            for rid in rule_ids:
                r = got[rid]
                if r.outcome != outcome:
                    bad.append(f"{rid}: expected {outcome}, got {r.outcome} ({r.why})")
        if exp.only_these_fail:
            for r in ev.violations:
                if r.rule.id not in exp.fail:
                    bad.append(f"{r.rule.id}: failed but is not listed in fail ({r.message()})")
        results.append(CaseResult(fx.name, ev, bad))
    return FixtureReport(str(path), pack, results)

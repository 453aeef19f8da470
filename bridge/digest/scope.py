"""Who sees what: a recipient's teams, rolled up through ``parent``, and their projects.

This is the confidentiality promise of the digests and exports: a project belongs to a scope
when its ``team`` is one of the scope's teams, or, for a project with no team (or a team the
config does not know), when its owner's e-mail is a member of one of them. Nothing else
crosses the line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bridge.config import Config, RecipientConfig
from bridge.errors import UserError
from bridge.store import Store


def expand_teams(config: Config, teams: Iterable[str]) -> frozenset[str]:
    """``teams`` plus every team nested under them (at any depth)."""
    children: dict[str, list[str]] = {}
    for name, team in config.teams.items():
        if team.parent is not None:
            children.setdefault(team.parent, []).append(name)
    out: set[str] = set()
    todo = list(teams)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        todo.extend(children.get(name, ()))
    return frozenset(out)


class Scope:
    """A set of teams and the test of whether a project falls inside it."""

    def __init__(self, config: Config, teams: Iterable[str]) -> None:
        self.roots = tuple(teams)
        self.teams = expand_teams(config, self.roots)
        self._known = frozenset(config.teams)
        self._members = frozenset(
            m.strip().lower()
            for t in self.teams
            for m in config.teams[t].members
            if t in config.teams
        )

    @property
    def key(self) -> tuple[frozenset[str], frozenset[str]]:
        """What decides :meth:`contains` (besides the config's team list): scopes of one
        config with equal keys hold the same projects, whatever roots they were named by."""
        return self.teams, self._members

    def contains(self, project: Mapping[str, Any]) -> bool:
        team = project.get("team")
        if team and team in self._known:
            return team in self.teams
        owner = project.get("owner") or {}
        email = (owner.get("email") or "").strip().lower()
        return bool(email) and email in self._members

    def projects(self, store: Store) -> Iterator[dict[str, Any]]:
        """The live projects of the scope, from the store."""
        for data in store.list_projects():
            if self.contains(data):
                yield data


def find_recipient(config: Config, name: str) -> tuple[str, RecipientConfig]:
    """A recipient by its ``[recipients.<key>]`` key or its ``name`` (case-insensitive)."""
    if name in config.recipients:
        return name, config.recipients[name]
    for key, rec in config.recipients.items():
        if rec.name.casefold() == name.casefold():
            return key, rec
    known = ", ".join(config.recipients) or "none configured"
    raise UserError(
        f"no recipient {name!r}; use a [recipients.<key>] key or name from the config "
        f"(known: {known})"
    )


def team_label(config: Config, team: str, lang: str) -> str:
    t = config.teams.get(team)
    if t is None:
        return team
    if lang == "zh-CN" and t.label_zh:
        return t.label_zh
    return t.label or team

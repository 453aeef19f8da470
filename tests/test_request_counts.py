"""Requests a sync costs, per connector: exact counts from the emulators' own request logs.

The same measurement as ``python -m bench`` (``bench/requests_bench.py``) at a small size: each
tool's emulator seeded with N generated projects and their history, synced alone by the real
runtime. Timings are never asserted; request counts are exact and stable, so a change that
costs a request more shows up here. See BENCHMARKS.md for the figures at 1,000 and 10,000.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.requests_bench import PAGE, measure
from bench.tools import KINDS

N = 250
CHANGED = max(1, N // 100)  # 1 % of the records, at least one

# kind: (full pull, incremental with 0 changes, incremental with 1 % changed, push of 1 %)
EXPECTED: dict[str, tuple[int, int, int, int]] = {
    # 3 search pages of 100 (changelog expanded); one search; a batch of updates reads the
    # versions of 100 issues with one search (key in ..., only `updated`), then one PUT each
    # with returnIssue (Cloud): its answer is the record.
    "jira": (3, 1, 1, math.ceil(CHANGED / 100) + CHANGED),
    # actions in pages of 1,000 (4 here) + lists + custom fields + cards; one actions call;
    # actions + one GET /batch holding the board's custom fields and the changed cards (ten
    # routes a batch); a batch of updates reads ten cards' versions per GET /batch, then one
    # PUT per card (its answer is the record).
    "trello": (
        7,
        1,
        1 + math.ceil((CHANGED + 1) / 10),
        CHANGED + math.ceil(CHANGED / 10),
    ),
    # 3 task pages + events + 2 batched GETs (subtasks, stories) per task, 10 per batch;
    # events; events + batches; a batch of updates reads each task, its subtasks and stories
    # ten reads per POST /batch, then the PUTs ten per batch (their answers are the records).
    "asana": (
        1 + math.ceil(N / 100) + math.ceil(2 * N / 10),
        1,
        1 + 2,
        math.ceil(3 * CHANGED / 10) + math.ceil(CHANGED / 10),
    ),
    # one SOQL query (2,000 a batch); one; one; per 200 updates: a SOQL query of their
    # versions (collections check none), the collections PATCH, a query reading them back
    # (their new versions).
    "salesforce": (1, 1, 1, 3 * math.ceil(CHANGED / 200)),
    # deals (500 a page) + persons by id (100 an ask) + organizations + activities; one;
    # deals + organizations + persons + activities per changed deal; a batch of updates lists
    # the versions of 100 deals (GET /api/v2/deals?ids=...), then one PATCH each (its answer
    # carries the new version).
    "pipedrive": (
        1 + math.ceil(N / 100) + 1 + 1,
        1,
        3 + CHANGED,
        math.ceil(CHANGED / 100) + CHANGED,
    ),
}


@pytest.fixture(scope="module", params=KINDS)
def counts(request: pytest.FixtureRequest) -> dict[str, Any]:
    return measure(request.param, N)


def test_every_connector_is_counted() -> None:
    assert set(EXPECTED) == set(KINDS) == set(PAGE)


def test_request_counts(counts: dict[str, Any]) -> None:
    kind = counts["kind"]
    got = tuple(
        counts[p]["requests"] for p in ("full", "incremental_0", "incremental_1pct", "push")
    )
    assert counts["changed"] == CHANGED and counts["pushed"] == CHANGED
    assert got == EXPECTED[kind], {p: counts[p]["by_call"] for p in ("full", "push")}


def test_targets_of_issue_12(counts: dict[str, Any]) -> None:
    """The targets the APIs allow: a full pull is its pages plus a few metadata calls
    (Asana: plus the batched per-task reads it forces), an idle pull is one request."""
    kind = counts["kind"]
    forced = math.ceil(2 * N / 10) if kind == "asana" else 0
    assert counts["full"]["requests"] <= math.ceil(N / PAGE[kind]) + 6 + forced
    assert counts["incremental_0"]["requests"] == 1

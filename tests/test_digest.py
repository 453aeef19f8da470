"""Digest content, scope, languages, masking, empty digests, the archive and the commands."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bridge.config import load_config
from bridge.digest import (
    build_digest,
    digest_run,
    expand_teams,
    render_digest,
    rerender,
    send_digests,
)
from bridge.digest.render import render
from bridge.digest.scope import Scope
from bridge.errors import UserError
from bridge.store import Store
from tests.digest_world import (
    EAST_SECRETS,
    NOW,
    SHANGHAI_SECRETS,
    WEST_SECRETS,
    config_data,
    loaded_config,
    projects,
    seed,
)


@pytest.fixture
def world() -> Iterator[tuple[Store, object]]:
    loaded = loaded_config()
    store = Store.open("sqlite://")
    try:
        # a violation whose condition has cleared: the first sweep resolves it
        store.put_projects(projects())
        store.open_violation(
            "overdue_tasks", "sb-sh2", severity="warning", at=NOW - timedelta(days=5)
        )
        seed(store, loaded, NOW - timedelta(days=3))
        seed(store, loaded, NOW)
        yield store, loaded
    finally:
        store.close()


def everything(store: Store, loaded: object, who: str, lang: str | None = None) -> str:
    html, text, md = render_digest(store, loaded, who, lang, NOW)  # type: ignore[arg-type]
    return "\n".join((html, text, md))


def test_nested_teams_roll_up_and_membership_places_teamless_projects() -> None:
    config = loaded_config().config
    assert expand_teams(config, ["sales"]) == {"sales", "east", "shanghai"}
    assert expand_teams(config, ["east"]) == {"east", "shanghai"}
    west = Scope(config, ["west"])
    by_code = {p.code: p.to_json() for p in projects()}
    assert west.contains(by_code["WEST-004"])  # no team, owner is a West member
    assert not west.contains(by_code["EAST-001"])
    assert not Scope(config, ["sales"]).contains(by_code["WEST-004"])


@pytest.mark.parametrize(
    ("who", "visible", "hidden"),
    [
        ("li", EAST_SECRETS + SHANGHAI_SECRETS, WEST_SECRETS),
        ("dir", EAST_SECRETS + SHANGHAI_SECRETS, WEST_SECRETS),
        ("bob", WEST_SECRETS, EAST_SECRETS + SHANGHAI_SECRETS),
    ],
)
def test_a_digest_holds_only_the_recipients_teams(
    world: tuple[Store, object], who: str, visible: tuple[str, ...], hidden: tuple[str, ...]
) -> None:
    store, loaded = world
    for lang in ("en", "zh-CN"):
        out = everything(store, loaded, who, lang)
        for secret in hidden:
            assert secret not in out, f"{secret!r} leaked into {who}'s digest"
    # the recipient's own projects are there (each has something needing attention or a
    # violation, and the project count says so)
    digest = build_digest(store, loaded, who, now=NOW)  # type: ignore[arg-type]
    assert digest.projects == len({s for s in visible if "-00" in s})


def test_one_run_for_all_recipients_keeps_each_scope(world: tuple[Store, object]) -> None:
    # One run shares work between recipients: what one recipient's scope computed must never
    # show up in another's digest, whichever order they are built in.
    store, loaded = world
    run = digest_run(store, loaded, NOW)  # type: ignore[arg-type]
    hidden = {
        "dir": WEST_SECRETS,
        "bob": EAST_SECRETS + SHANGHAI_SECRETS,
        "li": WEST_SECRETS,
    }
    for who in ("dir", "bob", "li", "bob", "dir"):
        for lang in ("en", "zh-CN"):
            out = "\n".join(render_digest(store, loaded, who, lang, run=run))  # type: ignore[arg-type]
            for secret in hidden[who]:
                assert secret not in out, f"{secret!r} leaked into {who}'s digest"


def test_one_run_gives_each_recipient_what_a_build_of_its_own_gives(
    world: tuple[Store, object],
) -> None:
    store, loaded = world
    earlier = NOW - timedelta(days=2)
    run = digest_run(store, loaded, NOW)  # type: ignore[arg-type]
    for who in ("dir", "li", "bob"):
        for lang in ("en", "zh-CN"):
            for since in (None, earlier):
                shared = build_digest(store, loaded, who, lang=lang, since=since, run=run)  # type: ignore[arg-type]
                alone = build_digest(store, loaded, who, lang=lang, since=since, now=NOW)  # type: ignore[arg-type]
                assert shared.model_dump(mode="json") == alone.model_dump(mode="json")
                assert render(shared) == render(alone)


def test_a_run_reads_and_evaluates_each_project_once(
    world: tuple[Store, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The work that does not depend on the recipient is done once per run: one read of the
    # projects and violations, and per project one evaluation at now and one per period end,
    # however many recipients and languages are built.
    store, loaded = world
    calls = {"list_projects": 0, "list_violations": 0, "evaluate": 0}

    def counting(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **kw: Any) -> Any:
            calls[name] += 1
            return fn(*a, **kw)

        return wrapped

    for name in ("list_projects", "list_violations"):
        monkeypatch.setattr(store, name, counting(name, getattr(store, name)))
    run = digest_run(store, loaded, NOW)  # type: ignore[arg-type]
    monkeypatch.setattr(run.pack, "evaluate", counting("evaluate", run.pack.evaluate))
    for _ in range(3):
        for who in ("dir", "li", "bob"):
            for lang in ("en", "zh-CN"):
                render_digest(store, loaded, who, lang, run=run)  # type: ignore[arg-type]
    live = len(projects())
    assert calls["list_projects"] == 1
    assert calls["list_violations"] == 1
    assert 0 < calls["evaluate"] <= 3 * live  # now, end of this period, end of the last one


def test_content_compliance_attention_and_kpis(world: tuple[Store, object]) -> None:
    store, loaded = world
    d = build_digest(store, loaded, "li", now=NOW)  # type: ignore[arg-type]
    c = d.compliance
    assert c.open_total > 0 and c.by_owner and c.by_rule
    assert {o.label["en"] for o in c.by_owner} <= {"Wang Fang", "Zhou Jie"}
    # opened three days ago and escalated now (the default pack escalates after 48 h)
    assert c.escalations and all(v.status == "escalated" for v in c.escalations)
    # without an earlier digest, "new" and "resolved" count from a week back
    assert c.new and all(v.opened_at >= NOW - timedelta(days=7) for v in c.new)
    assert ("overdue_tasks", "SH-002") in [(v.rule, v.project.code) for v in c.resolved]
    kinds = {(a.kind, a.project.code) for a in d.attention}
    assert ("overdue_update", "EAST-001") in kinds  # last update 6 days ago, cadence 3bd
    assert ("slipping", "EAST-001") in kinds  # pushed 02-10 -> 02-20 six days ago
    assert ("stuck", "EAST-001") in kinds  # 75 days in proposal
    slip = next(a for a in d.attention if a.kind == "slipping")
    assert (str(slip.old_date), str(slip.new_date)) == ("2026-02-10", "2026-02-20")
    keys = [k.key for k in d.kpis]
    assert keys == [
        "win_rate",
        "avg_cycle",
        "pipeline",
        "weighted",
        "velocity",
        "slippage",
        "stale_rate",
        "transparency",
    ]
    stale = next(k for k in d.kpis if k.key == "stale_rate")
    assert (stale.numerator, stale.denominator) == (1, 2)  # EAST-001 of EAST-001, SH-002
    pipeline = next(k for k in d.kpis if k.key == "pipeline")
    # 1,234,567 USD + 3,000,000 CNY at 0.14
    assert pipeline.amount == 1234567 + 420000
    assert [b.count for b in d.funnel if b.count] == [1, 1]


def test_both_languages(world: tuple[Store, object]) -> None:
    store, loaded = world
    zh = everything(store, loaded, "li")  # Li Na reads Chinese
    for text in (
        "销售项目简报",
        "方案制定与提交",
        "按规定频率更新",
        "2026年3月2日",
        "华东区",
        "赢单率",
    ):
        assert text in zh
    assert "123.5万 USD" in zh
    en = everything(store, loaded, "li", "en")
    for text in ("Sales project digest", "Proposal", "Updated within its cadence", "Mar 2, 2026"):
        assert text in en
    assert "1,234,567 USD" in en
    assert "销售项目简报" not in en


def test_amounts_are_masked_for_the_role(world: tuple[Store, object]) -> None:
    store, loaded = world
    out = everything(store, loaded, "bob")
    assert "Amounts are hidden for your role." in out
    for amount in ("987", "456", "USD", "1,444,443", "万"):
        assert amount not in out
    d = build_digest(store, loaded, "bob", now=NOW)  # type: ignore[arg-type]
    assert all(k.amount is None for k in d.kpis)
    assert all(b.value is None for b in d.funnel)


def test_empty_sections_are_left_out_and_empty_digests_skipped() -> None:
    data = config_data()
    data["teams"]["north"] = {"label": "North"}
    data["recipients"] = {
        "quiet": {"name": "Quiet", "teams": ["north"], "email": "q@example.com"},
        "verbose": {
            "name": "Verbose",
            "teams": ["north"],
            "email": "v@example.com",
            "skip_empty": False,
        },
    }
    loaded = load_config(None, data=data)
    with Store.open("sqlite://") as store:
        seed(store, loaded)
        out = {o.recipient: o for o in send_digests(store, loaded, now=NOW, dry_run=True)}
        assert out["quiet"].status == "skipped"
        assert out["verbose"].status == "dry_run"
        rendered = out["verbose"].rendered
        assert rendered is not None
        for heading in ("Compliance", "Projects needing attention", "Open projects by stage"):
            assert heading not in rendered.html
            assert heading.upper() not in rendered.text
        assert "Key figures" in rendered.html
        assert store.list_digests() == []  # a dry run archives nothing


def test_archived_digest_renders_again(world: tuple[Store, object]) -> None:
    store, loaded = world
    d = build_digest(store, loaded, "li", now=NOW)  # type: ignore[arg-type]
    first = render(d)
    digest_id = store.archive_digest(
        "li",
        lang=d.lang,
        subject=first.subject,
        status="sent",
        deliveries=[{"channel": "email:li.na@example.com", "ok": True}],
        content=d.model_dump(mode="json"),
        since=d.since,
        at=NOW,
    )
    record = store.get_digest(digest_id)
    assert store.last_digest("li") == record
    again = rerender(record)
    assert again == first
    assert "Sales project digest" in rerender(record, "en").html
    # the next digest counts "what changed" from this one
    assert build_digest(store, loaded, "li", now=NOW + timedelta(days=7)).since == NOW  # type: ignore[arg-type]


def test_html_is_an_email_not_a_web_page(world: tuple[Store, object]) -> None:
    store, loaded = world
    html, _text, _md = render_digest(store, loaded, "dir", None, NOW)  # type: ignore[arg-type]
    assert "<script" not in html.lower()
    assert "<style" not in html.lower()  # inline CSS only: e-mail clients drop style blocks
    assert 'name="viewport"' in html and "max-width:640px" in html
    assert "background:#2563eb" in html  # the funnel bars


# --------------------------------------------------------------------------- commands

CONFIG_TOML = """
timezone = "Asia/Shanghai"
[store]
url = "sqlite:///state.db"
[teams.sales]
label = "Sales"
[teams.east]
parent = "sales"
label = "East"
label_zh = "华东区"
[teams.shanghai]
parent = "east"
[teams.west]
members = ["walt.west@example.com"]
[recipients.li]
name = "Li Na"
language = "zh-CN"
teams = ["east"]
"""


@pytest.fixture
def cli_world(tmp_cwd: Path) -> Path:
    cfg = tmp_cwd / "salesbridge.toml"
    cfg.write_text(CONFIG_TOML, encoding="utf-8")
    loaded = load_config(cfg)
    with Store.open(loaded.store_url()) as store:
        seed(store, loaded, NOW)
    return cfg


def invoke(*args: str) -> object:
    import bridge.cli_digest  # noqa: F401  (registers the commands)
    from bridge.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_preview_writes_html_and_prints_text(cli_world: Path) -> None:
    r = invoke("digest", "preview", "--recipient", "Li Na", "--out", "d.html")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    html = Path("d.html").read_text(encoding="utf-8")
    assert "销售项目简报" in html and "EAST-001" in html and "WEST-003" not in html
    r = invoke("digest", "preview", "-r", "li", "--lang", "en")
    assert "Sales project digest" in r.output  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="no recipient 'nobody'"):
        invoke("digest", "preview", "-r", "nobody")


def test_cli_send_dry_run_lists_what_would_go(cli_world: Path) -> None:
    import json

    r = invoke("digest", "send", "--dry-run", "--json")
    rows = json.loads(r.output)  # type: ignore[attr-defined]
    # Li has neither e-mail nor chat: reported, and the command fails
    assert rows[0]["recipient"] == "li" and rows[0]["status"] == "failed"
    assert "no e-mail" in rows[0]["error"]
    assert r.exit_code == 1  # type: ignore[attr-defined]

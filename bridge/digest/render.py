"""Wording and layout: a :class:`~bridge.digest.content.Digest` as an HTML e-mail (inline CSS,
tables that hold at phone width, CSS bars instead of images or scripts), its plain-text part,
and Markdown for chat.

Everything is worded once, in :func:`view`, in the digest's language; the three templates only
lay the same words out. A section with nothing in it is left out of all three.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from bridge.digest.content import AttentionItem, Digest, Kpi, ProjectRef, ViolationItem
from bridge.digest.i18n import Fmt, norm_lang, pick

TEMPLATES = Path(__file__).parent / "templates"
# KPIs where a rise is bad news (shown in red).
_UP_IS_BAD = frozenset({"avg_cycle", "slippage", "stale_rate"})
_SEVERITY_COLOUR = {"critical": "#b91c1c", "warning": "#b45309", "info": "#475569"}
LIST_LIMIT = 8
"""Items shown per list (the rest are counted): a digest is read on a phone."""
_GAP = re.compile(r"^(\d+) (business day|day|hour)s?$")
_GAP_ZH = {"business day": "个工作日", "day": "天", "hour": "小时"}


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    markdown: str


@functools.cache
def _env(autoescape: bool) -> jinja2.Environment:
    """One environment per escaping mode for the process: Jinja compiles a template once and
    keeps it (checking the file's time, so an edited template is read again)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,  # noqa: S701 - off only for the text and Markdown parts
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _project(p: ProjectRef, f: Fmt) -> dict[str, Any]:
    stage = pick(p.stage_label, f.lang)
    parts = [x for x in (p.customer, p.owner, stage) if x]
    return {
        "name": p.name,
        "code": p.code or "",
        "url": p.url,
        "meta": " · ".join(parts),
        "line": " · ".join([f"{p.code} {p.name}" if p.code else p.name, *parts]),
    }


def _violation(v: ViolationItem, f: Fmt, when: str) -> dict[str, Any]:
    title = pick(v.title, f.lang)
    message = pick(v.message, f.lang) if v.message else ""
    message = "" if message == title else message
    severity = f.t("critical") if v.severity == "critical" else ""
    detail = (f"[{severity}] " if severity else "") + title + (f": {message}" if message else "")
    return {
        "project": _project(v.project, f),
        "title": title,
        "message": message,
        "severity": severity,
        "colour": _SEVERITY_COLOUR.get(v.severity, "#475569"),
        "when": when,
        "detail": f"{detail} ({when})",
    }


def _gap(limit: str | None, f: Fmt) -> str:
    """A cadence limit (``3 business days``) in the reader's language."""
    if not limit:
        return "-"
    m = _GAP.match(limit)
    if f.lang != "zh-CN" or m is None:
        return limit
    return f"{m.group(1)} {_GAP_ZH[m.group(2)]}"


def _capped(
    items: Sequence[ViolationItem], f: Fmt, word: Callable[[ViolationItem], dict[str, Any]]
) -> dict[str, Any] | None:
    """The first :data:`LIST_LIMIT` items worded by ``word`` (the rest only counted)."""
    if not items:
        return None
    more = len(items) - LIST_LIMIT
    return {
        "items": [word(v) for v in items[:LIST_LIMIT]],
        "count": len(items),
        "more": f.t("more", n=f.count(more)) if more > 0 else "",
    }


def _attention(a: AttentionItem, f: Fmt) -> dict[str, Any]:
    stage = pick(a.project.stage_label, f.lang)
    if a.kind == "overdue_update":
        detail = (
            f.t("idle", days=f.count(a.days), limit=_gap(a.limit, f))
            if a.days is not None
            else f.t("idle_never", limit=_gap(a.limit, f))
        )
    elif a.kind == "slipping" and a.new_date is not None:
        detail = f.t("close_pushed", old=f.date(a.old_date), new=f.date(a.new_date))
    elif a.kind == "slipping":
        detail = f.t("close_passed", date=f.date(a.old_date), days=f.count(a.days or 0))
    else:
        detail = f.t("in_stage", days=f.count(a.days or 0), stage=stage)
    return {"project": _project(a.project, f), "detail": detail}


def _kpi_value(k: Kpi, f: Fmt, currency: str, previous: bool) -> str:
    if k.unit == "money":
        amount = k.previous_amount if previous else k.amount
        if amount is None:
            return f.t("no_data")
        text = f.money(amount, currency)
        return text + f.t("per_day") if k.key == "velocity" else text
    value = k.previous if previous else k.value
    if value is None:
        return f.t("no_data")
    return f.pct(value) if k.unit == "pct" else f.days(value)


def _delta(k: Kpi, f: Fmt) -> tuple[str, str]:
    """(text, colour) of the change against the previous period."""
    if k.unit == "money":
        a, b = k.amount, k.previous_amount
        if a is None or b is None:
            return "", "#64748b"
        diff: float = float(a - b)
        if not b:
            text = "" if not a else ("+" if a > 0 else "") + f.money(a - b, "").strip()
        else:
            text = f"{'+' if diff >= 0 else '−'}{f.num(abs(diff) / float(b) * 100, 0)}%"
    else:
        if k.value is None or k.previous is None:
            return "", "#64748b"
        diff = k.value - k.previous
        sign = "+" if diff >= 0 else "−"
        if k.unit == "pct":
            text = f"{sign}{f.num(abs(diff) * 100, 1)} pp"
        else:
            text = f"{sign}{f.days(abs(diff))}"
    if abs(diff) < 1e-9:
        return text, "#64748b"
    good = (diff > 0) != (k.key in _UP_IS_BAD)
    return text, "#15803d" if good else "#b91c1c"


def _kpi(k: Kpi, d: Digest, f: Fmt) -> dict[str, Any]:
    delta, colour = _delta(k, f)
    if k.numerator is not None and k.denominator is not None:
        basis = f"{f.count(k.numerator)} / {f.count(k.denominator)}"
    elif k.denominator is not None:
        basis = f.t("denominator", n=f.count(k.denominator))
    else:
        basis = ""
    return {
        "label": f.t(f"kpi.{k.key}"),
        "value": "***" if k.masked else _kpi_value(k, f, d.currency, False),
        "previous": "***" if k.masked else _kpi_value(k, f, d.currency, True),
        "delta": "" if k.masked else delta,
        "colour": colour,
        "formula": f.t(f"kpi.{k.key}.f"),
        "basis": basis,
        "basis_paren": f" ({basis})" if basis else "",
    }


def _bars(items: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    top = max((n for _, n, _ in items), default=0)
    return [
        {
            "label": label,
            "count": n,
            "extra": extra,
            "suffix": f" · {extra}" if extra else "",
            "pct": round(n / top * 100) if top else 0,
        }
        for label, n, extra in items
    ]


def view(d: Digest, lang: str | None = None) -> dict[str, Any]:
    """Every word and number of the digest, in ``lang`` (default: the digest's)."""
    lg = norm_lang(lang or d.lang)
    f = Fmt(lg, ZoneInfo(d.timezone))
    teams = pick(d.team_labels, lg)
    c = d.compliance
    subject = (
        f.t("subject", teams=teams, open=f.count(c.open_total), new=f.count(len(c.new)))
        if c.open_total or c.new
        else f.t("subject_quiet", teams=teams)
    )
    subject += f" · {f.date(d.generated_at)}"
    compliance = None
    if not c.empty:
        compliance = {
            "summary": f"{f.count(c.open_total)} {f.t('open_violations').lower()}"
            if lg == "en"
            else f"{f.t('open_violations')} {f.count(c.open_total)} 项",
            "critical": f"{f.count(c.critical_total)} {f.t('critical')}"
            if c.critical_total
            else "",
            "by_owner": [
                {"label": o.label[lg] or f.t("owner_none"), "open": o.open, "critical": o.critical}
                for o in c.by_owner
            ],
            "by_rule": [
                {"label": pick(r.label, lg), "open": r.open, "critical": r.critical}
                for r in c.by_rule
            ],
            "escalations": _capped(
                c.escalations,
                f,
                lambda v: _violation(v, f, f.t("escalated_on", date=f.date(v.escalated_at))),
            ),
            "new": _capped(
                c.new, f, lambda v: _violation(v, f, f"{f.t('since')} {f.date(v.opened_at)}")
            ),
            "resolved": _capped(
                c.resolved,
                f,
                lambda v: _violation(v, f, f.t("resolved_on", date=f.date(v.resolved_at))),
            ),
        }
    attention = [
        {"heading": f.t(kind), "items": [_attention(a, f) for a in d.attention_of(kind)]}
        for kind in ("overdue_update", "slipping", "stuck")
        if d.attention_of(kind)
    ]
    conversion = [
        {
            "label": f"{pick(cv.label, lg)} → {pick(cv.next_label, lg)}",
            "value": f.pct(cv.rate) if cv.rate is not None else f.t("no_data"),
            "previous": f.pct(cv.previous) if cv.previous is not None else f.t("no_data"),
            "basis": f"{f.count(cv.moved)} / {f.count(cv.entered)}",
        }
        for cv in d.conversion
    ]

    def money(x: Decimal | None) -> str:
        return "" if x is None or d.masked else f.money(x, d.currency)

    funnel = _bars([(pick(s.label, lg), s.count, money(s.value)) for s in d.funnel])
    freshness = _bars([(f.t(b.key), b.count, "") for b in d.freshness])
    return {
        "lang": lg,
        "subject": subject,
        "title": f.t("title"),
        "recipient": d.recipient_name,
        "date": f.date(d.generated_at),
        "intro": f.t(
            "intro",
            projects=f.count(d.projects),
            teams=teams,
            open_projects=f.count(d.open_projects),
            since=f.date(d.since),
        ),
        "masked_note": f.t("masked_note") if d.masked else "",
        "t": f.t,
        "compliance": compliance,
        "attention": attention,
        "kpis": [_kpi(k, d, f) for k in d.kpis],
        "kpi_note": f.t(
            "kpi_note",
            days=d.period_days,
            start=f.date(d.period_start),
            end=f.date(d.period_end),
        ),
        "conversion": conversion,
        "conversion_formula": f.t("kpi.conversion.f"),
        "funnel": funnel if any(b["count"] for b in funnel) else [],
        "freshness": freshness if any(b["count"] for b in freshness) else [],
        "footer": f.t("footer", teams=teams),
    }


def render(d: Digest, lang: str | None = None) -> Rendered:
    """The digest as subject, HTML, plain text and Markdown."""
    v = view(d, lang)
    html = _env(True).get_template("digest.html.j2").render(**v)
    text = _env(False).get_template("digest.txt.j2").render(**v)
    markdown = _env(False).get_template("digest.md.j2").render(**v)
    return Rendered(v["subject"], html, _squeeze(text), _squeeze(markdown))


def _squeeze(text: str) -> str:
    """At most one blank line in a row (templates with optional sections leave more)."""
    out: list[str] = []
    for line in text.splitlines():
        if not line.strip() and out and not out[-1].strip():
            continue
        out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"

"""Compliance digests for managers: content, KPIs, rendering, delivery and the archive.

::

    html, text, markdown = render_digest(store, loaded, "li", "zh-CN", now)
    outcomes = send_digests(store, loaded, only=["li"])        # e-mail + chat, archived
    run = digest_run(store, loaded, now)                        # many recipients: share the work
    digests = [build_digest(store, loaded, k, lang=lg, run=run) for k in keys for lg in langs]
    html, text, markdown, subject = rerender(store.get_digest(outcomes[0].digest_id))

Layers: :mod:`~bridge.digest.scope` decides which projects a recipient may see (their teams
and every team nested under them, nothing else); :mod:`~bridge.digest.content` gathers what
to say (compliance from the sweep's violations, projects needing attention, the KPIs of
:mod:`~bridge.digest.kpi`, the funnel and freshness) with amounts already masked for roles
that must not see them; :mod:`~bridge.digest.render` words and lays it out (HTML e-mail,
plain text, Markdown for chat) in ``en`` or ``zh-CN``; :mod:`~bridge.digest.deliver` sends
it (SMTP, apprise) with retries. Every digest sent is archived in the store with its content
model, so it can be rendered again as it was.

Digests of many recipients are built from one :class:`~bridge.digest.content.DigestRun`:
the projects, violations and event logs are read once, each project is evaluated by the rule
pack and counted into the KPIs once, and each scope's figures are summed once; per recipient
only the scope's share is picked and worded. :func:`send_digests` does this on its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Any

from bridge.config import LoadedConfig
from bridge.digest.content import Digest, DigestRun
from bridge.digest.deliver import (
    Delivery,
    DeliveryError,
    Retry,
    email_message,
    send_chat,
    send_email,
    with_retry,
)
from bridge.digest.i18n import norm_lang
from bridge.digest.render import Rendered, render
from bridge.digest.scope import Scope, expand_teams, find_recipient
from bridge.store import DigestRecord, Store

__all__ = [
    "Delivery",
    "DeliveryError",
    "Digest",
    "DigestRun",
    "Outcome",
    "Rendered",
    "Retry",
    "Scope",
    "build_digest",
    "digest_run",
    "expand_teams",
    "find_recipient",
    "load_pack",
    "render_digest",
    "rerender",
    "send_digests",
]

log = logging.getLogger(__name__)


def load_pack(loaded: LoadedConfig) -> Any:
    """The configured rule pack (``[rules] files``), or the default pack."""
    from bridge.rules import load_rules

    files = [loaded.resolve(p) for p in loaded.config.rules.files] or None
    return load_rules(files, lifecycle=loaded.config.lifecycle)


def _calendars(loaded: LoadedConfig) -> Any:
    from bridge.rules.sweep import calendars_from_config

    return calendars_from_config(loaded.config)


def digest_run(
    store: Store, loaded: LoadedConfig, now: datetime | None = None, pack: Any = None
) -> DigestRun:
    """A :class:`DigestRun` at ``now`` (default: the current time) with the configured pack:
    build every recipient's digest of one run from it."""
    return DigestRun(
        store,
        loaded.config,
        pack if pack is not None else load_pack(loaded),
        now=now or datetime.now(UTC),
        calendar_of=_calendars(loaded),
    )


def build_digest(
    store: Store,
    loaded: LoadedConfig,
    recipient: str,
    *,
    lang: str | None = None,
    now: datetime | None = None,
    pack: Any = None,
    since: datetime | None = None,
    run: DigestRun | None = None,
) -> Digest:
    """The content of ``recipient``'s digest (a ``[recipients.<key>]`` key or a name). With
    ``run`` (see :func:`digest_run`) the run's time and pack are used and its work shared."""
    key, rec = find_recipient(loaded.config, recipient)
    if run is None:
        run = digest_run(store, loaded, now, pack)
    return run.digest(key, rec, lang=norm_lang(lang) if lang else rec.language, since=since)


def render_digest(
    store: Store,
    loaded: LoadedConfig,
    recipient: str,
    lang: str | None = None,
    now: datetime | None = None,
    *,
    run: DigestRun | None = None,
) -> tuple[str, str, str]:
    """(HTML, plain text, Markdown) of ``recipient``'s digest as it would be sent now."""
    r = render(build_digest(store, loaded, recipient, lang=lang, now=now, run=run))
    return r.html, r.text, r.markdown


def rerender(record: DigestRecord, lang: str | None = None) -> Rendered:
    """An archived digest rendered again from its stored content (optionally in ``lang``)."""
    return render(Digest.model_validate(record.content), lang)


@dataclass
class Outcome:
    """What happened for one recipient."""

    recipient: str
    status: str
    """``sent``, ``partial``, ``failed``, ``skipped`` (nothing to say), ``dry_run`` or
    ``error`` (the digest could not be built)."""
    subject: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    digest_id: int | None = None
    error: str | None = None
    rendered: Rendered | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "status": self.status,
            "subject": self.subject,
            "channels": self.channels,
            "deliveries": [d.as_json() for d in self.deliveries],
            "digest_id": self.digest_id,
            "error": self.error,
        }


def send_digests(
    store: Store,
    loaded: LoadedConfig,
    *,
    only: Sequence[str] | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    retry: Retry | None = None,
    environ: dict[str, str] | None = None,
    ssl_context: SSLContext | None = None,
) -> list[Outcome]:
    """Build, send and archive the digests of every recipient (or those in ``only``, by key
    or name). One recipient's failure is reported in its :class:`Outcome` and the others go
    on. ``dry_run`` builds and renders but sends and archives nothing."""
    config = loaded.config
    keys = (
        [find_recipient(config, n)[0] for n in dict.fromkeys(only)]
        if only is not None
        else list(config.recipients)
    )
    now = (now or datetime.now(UTC)).astimezone(UTC)
    retry = retry or Retry()
    if not keys:
        return []
    run = digest_run(store, loaded, now)
    outcomes = []
    for key in keys:
        try:
            outcomes.append(
                _one(store, loaded, key, run, now, dry_run, retry, environ, ssl_context)
            )
        except Exception as exc:  # one recipient's bad data must not stop the others
            log.exception("digest: building the digest of %s failed", key)
            outcomes.append(Outcome(key, "error", error=f"{type(exc).__name__}: {exc}"))
    return outcomes


def _one(
    store: Store,
    loaded: LoadedConfig,
    key: str,
    run: DigestRun,
    now: datetime,
    dry_run: bool,
    retry: Retry,
    environ: dict[str, str] | None,
    ssl_context: SSLContext | None,
) -> Outcome:
    config = loaded.config
    rec = config.recipients[key]
    digest = build_digest(store, loaded, key, run=run)
    rendered = render(digest)
    channels = ([f"email:{rec.email}"] if rec.email and config.smtp else []) + [
        f"chat:{i + 1}" for i in range(len(rec.channels))
    ]
    out = Outcome(key, "dry_run", rendered.subject, channels=channels, rendered=rendered)
    if rec.skip_empty and digest.empty:
        out.status = "skipped"
        return out
    if not channels:
        out.status = "failed"
        out.error = (
            f"[recipients.{key}] has no e-mail (with [smtp]) and no channels; add one of them"
        )
        return out
    if dry_run:
        return out
    smtp = config.smtp
    if rec.email and smtp is not None:
        msg = email_message(rendered, sender=smtp.sender, to=rec.email)
        out.deliveries.append(
            with_retry(
                channels[0],
                retry,
                lambda: send_email(smtp, msg, environ=environ, context=ssl_context),
            )
        )
    for i, url in enumerate(rec.channels):
        post = functools.partial(send_chat, url, rendered, environ=environ)
        out.deliveries.append(with_retry(f"chat:{i + 1}", retry, post))
    delivered = sum(d.ok for d in out.deliveries)
    out.status = (
        "sent" if delivered == len(out.deliveries) else "partial" if delivered else "failed"
    )
    out.digest_id = store.archive_digest(
        key,
        lang=digest.lang,
        subject=rendered.subject,
        status=out.status,
        deliveries=[d.as_json() for d in out.deliveries],
        content=digest.model_dump(mode="json"),
        since=digest.since,
        at=now,
    )
    return out

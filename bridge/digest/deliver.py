"""Delivery: e-mail over SMTP (SSL or STARTTLS, password from the environment) and chat
webhooks through apprise (Slack, Feishu/Lark, DingTalk, WeCom, Teams, or any JSON endpoint).

Each channel is tried a few times with backoff (tenacity); a channel that still fails is
reported, never raised, so one recipient's broken webhook cannot stop the next recipient.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from tenacity import RetryError, Retrying, stop_after_attempt, wait_exponential

from bridge.config import SmtpConfig
from bridge.digest.render import Rendered
from bridge.errors import SalesbridgeError
from bridge.secrets import SecretRef, redact

log = logging.getLogger(__name__)


class DeliveryError(SalesbridgeError):
    """A channel refused or could not take the digest."""


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently a channel is tried."""

    attempts: int = 3
    wait_min: float = 2.0
    wait_max: float = 30.0


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    """``email:<address>`` or ``chat:<n>`` (the n-th configured webhook; never its URL)."""
    ok: bool
    attempts: int
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "ok": self.ok,
            "attempts": self.attempts,
            "error": self.error,
        }


def with_retry(channel: str, retry: Retry, send: Callable[[], None]) -> Delivery:
    """Run ``send`` until it succeeds or the attempts run out."""
    attempts = 0
    try:
        for attempt in Retrying(
            stop=stop_after_attempt(retry.attempts),
            wait=wait_exponential(min=retry.wait_min, max=retry.wait_max),
            reraise=False,
        ):
            with attempt:
                attempts += 1
                send()
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        message = redact(f"{type(cause).__name__}: {cause}")
        log.warning("digest: %s failed after %d attempt(s): %s", channel, attempts, message)
        return Delivery(channel, False, attempts, message)
    return Delivery(channel, True, attempts)


def email_message(rendered: Rendered, *, sender: str, to: str) -> EmailMessage:
    """A multipart/alternative message: the plain-text part first, the HTML part preferred."""
    msg = EmailMessage()
    msg["Subject"] = rendered.subject
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return msg


def send_email(
    smtp: SmtpConfig,
    msg: EmailMessage,
    *,
    environ: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> None:
    """Send one message. ``context`` defaults to the system's trusted CAs."""
    ctx = context or ssl.create_default_context()
    client: smtplib.SMTP
    if smtp.security == "ssl":
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout, context=ctx)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
    with client:
        if smtp.security == "starttls":
            client.starttls(context=ctx)
        if smtp.username:
            if smtp.password is None:
                raise DeliveryError(
                    "[smtp] username is set but password is not; add "
                    'password = "env:SMTP_PASSWORD" and export that variable'
                )
            client.login(smtp.username, smtp.password.reveal(environ))
        client.send_message(msg)


def send_chat(url: SecretRef, rendered: Rendered, *, environ: dict[str, str] | None = None) -> None:
    """Post the Markdown digest to one apprise URL (held in an environment variable)."""
    import apprise

    target = url.reveal(environ)
    with warnings.catch_warnings():
        # apprise's optional plugins import modules Python has deprecated (imghdr).
        warnings.simplefilter("ignore", DeprecationWarning)
        bot = apprise.Apprise()
        if not bot.add(target):
            raise DeliveryError(f"env:{url.var} is not an apprise URL apprise understands")
        ok = bot.notify(
            body=rendered.markdown,
            title=rendered.subject,
            body_format=apprise.NotifyFormat.MARKDOWN,
        )
    if not ok:
        raise DeliveryError(f"the chat service behind env:{url.var} did not accept the digest")

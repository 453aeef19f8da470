"""Digests delivered for real: a real SMTP server (aiosmtpd on 127.0.0.1) and a local webhook
receiver taking apprise's posts; what arrives is checked, not what was meant to be sent."""

from __future__ import annotations

import email
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bridge.config import LoadedConfig, load_config
from bridge.digest import Retry, rerender, send_digests
from bridge.store import Store
from tests.digest_world import (
    EAST_SECRETS,
    NOW,
    SHANGHAI_SECRETS,
    WEST_SECRETS,
    config_data,
    seed,
)

FAST = Retry(attempts=3, wait_min=0, wait_max=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def to(self, address: str) -> EmailMessage:
        [msg] = [m for _f, tos, m in self.messages if address in tos]
        return msg


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"digests",
        b"s3cret-smtp",
    )
    return AuthResult(success=ok)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,  # plain AUTH on 127.0.0.1; the STARTTLS test covers TLS
    )
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


class Hooks:
    """A webhook receiver: records every POST; ``fail`` makes a path answer 500 n times."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b in self.posts if p == path]


@pytest.fixture
def hooks() -> Iterator[tuple[Hooks, int]]:
    state = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                left = state.fail.get(self.path, 0)
                if left:
                    state.fail[self.path] = left - 1
                    code = 500
                else:
                    state.posts.append((self.path, json.loads(body)))
                    code = 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def world(smtp_port: int, **smtp: Any) -> LoadedConfig:
    data = config_data()
    data["smtp"] = {
        "host": "127.0.0.1",
        "port": smtp_port,
        "security": "none",
        "username": "digests",
        "password": "env:TEST_SMTP_PASSWORD",
        "sender": "salesbridge@example.com",
        **smtp,
    }
    data["recipients"]["li"]["channels"] = ["env:TEST_HOOK_LI"]
    data["recipients"]["bob"]["channels"] = ["env:TEST_HOOK_BOB"]
    return load_config(None, data=data)


def parts(msg: EmailMessage) -> tuple[str, str]:
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    return str(plain.get_content()), str(html.get_content())  # type: ignore[attr-defined]


def test_email_and_chat_arrive_scoped_translated_and_masked(
    smtp_server: tuple[Mailbox, int],
    hooks: tuple[Hooks, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box, smtp_port = smtp_server
    recv, hook_port = hooks
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-smtp")
    monkeypatch.setenv("TEST_HOOK_LI", f"json://127.0.0.1:{hook_port}/li")
    monkeypatch.setenv("TEST_HOOK_BOB", f"json://127.0.0.1:{hook_port}/bob")
    loaded = world(smtp_port)
    with Store.open("sqlite://") as store:
        seed(store, loaded)
        outcomes = send_digests(store, loaded, now=NOW, retry=FAST)
        assert {o.recipient: o.status for o in outcomes} == {
            "li": "sent",
            "bob": "sent",
            "dir": "sent",
        }

        # Li Na: Chinese, East + Shanghai only, amounts shown
        li = box.to("li.na@example.com")
        assert li["From"] == "salesbridge@example.com"
        assert "销售项目简报" in li["Subject"] and "华东区" in li["Subject"]
        text, html = parts(li)
        assert text.startswith("销售项目简报")
        assert "合规情况" in text and "关键指标" in text and "方案制定与提交" in text
        assert "<table" in html and "按规定频率更新" in html
        assert "123.5万 USD" in text
        [chat] = recv.bodies("/li")
        assert chat["title"] == li["Subject"]
        assert "### 合规情况" in chat["message"] and "EAST-001" in chat["message"]
        for secret in WEST_SECRETS:
            assert secret not in text + html + li["Subject"] + chat["message"]

        # Bob: English, West only, every amount masked
        bob = box.to("bob@example.com")
        text, html = parts(bob)
        [chat] = recv.bodies("/bob")
        everything = text + html + bob["Subject"] + chat["message"]
        assert "Sales project digest" in text and "KEY FIGURES" in text
        assert "Amounts are hidden for your role." in text
        assert "WEST-003" in text and "Canyon Fleet Telematics" in everything
        for hidden in (*EAST_SECRETS, *SHANGHAI_SECRETS, "USD", "987", "456"):
            assert hidden not in everything

        # the director sees both nested teams, and only them
        text, html = parts(box.to("dir@example.com"))
        assert "EAST-001" in html and "SH-002" in html
        assert not any(s in text + html for s in WEST_SECRETS)

        # archived: who, when, what, and renderable again as sent
        records = {r.recipient: r for r in store.list_digests()}
        assert set(records) == {"li", "bob", "dir"}
        rec = records["li"]
        assert rec.sent_at == NOW and rec.status == "sent" and rec.lang == "zh-CN"
        assert [d["channel"] for d in rec.deliveries] == ["email:li.na@example.com", "chat:1"]
        again = rerender(rec)
        assert again.subject == li["Subject"]
        assert again.text.strip() == parts(li)[0].strip()
        assert "s3cret" not in json.dumps(rec.content)


def test_one_broken_channel_does_not_stop_the_others_and_is_retried(
    smtp_server: tuple[Mailbox, int],
    hooks: tuple[Hooks, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box, smtp_port = smtp_server
    recv, hook_port = hooks
    recv.fail["/li"] = 2  # two 500s, then accepted: the third attempt gets through
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-smtp")
    monkeypatch.setenv("TEST_HOOK_LI", f"json://127.0.0.1:{hook_port}/li")
    monkeypatch.setenv("TEST_HOOK_BOB", f"json://127.0.0.1:{free_port()}/nobody-listens")
    loaded = world(smtp_port)
    with Store.open("sqlite://") as store:
        seed(store, loaded)
        out = {o.recipient: o for o in send_digests(store, loaded, now=NOW, retry=FAST)}
        assert out["li"].status == "sent"
        assert [d.attempts for d in out["li"].deliveries] == [1, 3]
        assert len(recv.bodies("/li")) == 1
        assert out["bob"].status == "partial"  # the mail went, the chat did not
        [mail, chat] = out["bob"].deliveries
        assert mail.ok and not chat.ok and chat.attempts == 3
        assert "nobody-listens" not in (chat.error or "")  # the URL (a secret) is not shown
        assert out["dir"].status == "sent"
        assert len(box.messages) == 3
        assert {r.recipient: r.status for r in store.list_digests()} == {
            "li": "sent",
            "bob": "partial",
            "dir": "sent",
        }


def test_unreachable_smtp_server_fails_that_channel_only(
    hooks: tuple[Hooks, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    recv, hook_port = hooks
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-smtp")
    monkeypatch.setenv("TEST_HOOK_LI", f"json://127.0.0.1:{hook_port}/li")
    monkeypatch.setenv("TEST_HOOK_BOB", f"json://127.0.0.1:{hook_port}/bob")
    loaded = world(free_port())  # nothing listens there
    with Store.open("sqlite://") as store:
        seed(store, loaded)
        out = {o.recipient: o for o in send_digests(store, loaded, now=NOW, retry=FAST)}
    assert (out["li"].status, out["bob"].status, out["dir"].status) == (
        "partial",
        "partial",
        "failed",
    )
    assert "ConnectionRefusedError" in (out["dir"].deliveries[0].error or "")
    assert len(recv.bodies("/li")) == 1 and len(recv.bodies("/bob")) == 1


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
    except FileNotFoundError:
        pytest.skip("openssl is not installed")
    return cert, key


def test_starttls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    box = Mailbox()
    port = free_port()
    ctl = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    ctl.start()
    try:
        monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-smtp")
        data = config_data()
        data["smtp"] = {
            "host": "127.0.0.1",
            "port": port,
            "security": "starttls",
            "username": "digests",
            "password": "env:TEST_SMTP_PASSWORD",
            "sender": "salesbridge@example.com",
        }
        loaded = load_config(None, data=data)
        with Store.open("sqlite://") as store:
            seed(store, loaded)
            out = send_digests(
                store, loaded, only=["Li Na"], now=NOW, retry=FAST, ssl_context=client_ctx
            )
    finally:
        ctl.stop()
    assert [o.status for o in out] == ["sent"]
    assert "销售项目简报" in parts(box.to("li.na@example.com"))[0]

"""``salesbridge run`` as a subprocess against the Pipedrive, Trello and Asana emulators.

The emulators run in this process, seeded by the demo's helpers (a few dozen projects); the
service runs in its own process with the tokens in its environment and reaches back to them
over HTTP, and they deliver their webhooks to its ``/webhooks/<connector>``. One story, in
order (each test is a chapter and needs the ones before it):

1. The service starts, syncs every tool once and reports ready; a second ``run`` on the same
   store exits 2 with a clear message.
2. Webhooks are registered (twice: nothing doubles); an edit made through one emulator's HTTP
   API reaches the other tool within seconds, with polling an hour away.
3. A forged delivery is answered 401, logged, and starts no sync; a replayed one likewise.
4. ``/healthz`` and ``/metrics`` say what happened.
5. SIGTERM during a slowed-down cycle: exit 0 within a bound; edits made meanwhile and the
   interrupted one arrive after the next start, which polls every 2 s with webhooks removed
   and logs JSON without a secret.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

import bridge.cli_webhooks  # noqa: F401 - registers `salesbridge webhooks`
from bridge.cli import app
from bridge.demo import ENV, Tool, tools, write_workspace
from bridge.store import Store
from connectors.trello.emulator import webhook_signature

REPO = Path(__file__).resolve().parent.parent
KINDS = ("pipedrive", "trello", "asana")
PD_HOOK_PASSWORD = "pd-hook-s3cret"  # emulator-only


@dataclass
class World:
    tools: dict[str, Tool]
    config: Path
    port: int
    env: dict[str, str]
    store_url: str
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)
    """"pipedrive" -> (deal ref, trello card ref) of one project linked in both, and so on."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Proc:
    """``salesbridge run`` in a subprocess; its output lines collected by reader threads."""

    def __init__(self, world: World, *args: str, log_format: str | None = None) -> None:
        cmd = [sys.executable, "-m", "bridge", "--log-level", "info", "run"]
        cmd += ["--config", str(world.config), *args]
        if log_format:
            cmd += ["--log-format", log_format]
        self.proc = subprocess.Popen(
            cmd,
            cwd=world.config.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=world.env,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for r in self._readers:
            r.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def since(self, mark: int) -> str:
        with self._lock:
            return "\n".join(self.lines[mark:])

    def wait_line(self, pattern: str, *, since: int = 0, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.lines[since:]:
                    if rx.search(line):
                        return line
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.text}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.close()
        return rc, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for r in self._readers:
            r.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll ``check`` until true; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_interval(world: World, interval: str) -> None:
    text = world.config.read_text(encoding="utf-8")
    world.config.write_text(
        re.sub(r'^interval = "[^"]*"$', f'interval = "{interval}"', text, flags=re.M),
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- the tools' APIs


def pd_title(world: World, ref: str) -> str:
    return str(world.tools["pipedrive"].emulator.deals[int(ref)]["title"])  # type: ignore[attr-defined]


def trello_name(world: World, ref: str) -> str:
    return str(world.tools["trello"].emulator.cards[ref]["name"])  # type: ignore[attr-defined]


def asana_name(world: World, ref: str) -> str:
    return str(world.tools["asana"].emulator.state.tasks[ref]["name"])  # type: ignore[attr-defined]


def pd_rename(world: World, ref: str, title: str) -> None:
    r = requests.patch(
        f"{world.tools['pipedrive'].emulator.base_url}/api/v2/deals/{ref}",
        json={"title": title},
        headers={"x-api-token": ENV["SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN"]},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def trello_rename(world: World, ref: str, name: str) -> None:
    r = requests.put(
        f"{world.tools['trello'].emulator.base_url}/1/cards/{ref}",
        params={
            "name": name,
            "key": ENV["SALESBRIDGE_DEMO_TRELLO_KEY"],
            "token": ENV["SALESBRIDGE_DEMO_TRELLO_TOKEN"],
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text


def asana_rename(world: World, ref: str, name: str) -> None:
    emu: Any = world.tools["asana"].emulator
    r = requests.put(
        f"{emu.api_url}/tasks/{ref}",
        json={"data": {"name": name}},
        headers={"Authorization": f"Bearer {ENV['SALESBRIDGE_DEMO_ASANA_TOKEN']}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def metric(world: World, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    text = requests.get(f"{world.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def cycles(world: World) -> float:
    return metric(world, "salesbridge_sync_cycles_total")


def settle(world: World) -> float:
    """Wait until no sync has run for a second and a half; return the cycle count."""
    world.tools["pipedrive"].emulator.flush_webhooks()  # type: ignore[attr-defined]
    last, stable_since = cycles(world), time.monotonic()
    while time.monotonic() - stable_since < 1.5:
        time.sleep(0.25)
        now = cycles(world)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def cli(world: World, *args: str) -> Any:
    result = CliRunner().invoke(
        app, [*args, "--config", str(world.config), "--json"], env=world.env
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    saved = dict(os.environ)
    try:
        with tools(30) as running:
            sub = {k: running[k] for k in KINDS}
            _propose_one(sub)
            trello_secret = running["trello"].emulator.app_secret  # type: ignore[attr-defined]
            sub["trello"].settings["webhook_secret"] = "env:SB_TEST_TRELLO_APP_SECRET"
            sub["pipedrive"].settings["webhook_password"] = "env:SB_TEST_PD_HOOK_PASSWORD"
            ws = tmp_path_factory.mktemp("service") / "ws"
            config = write_workspace(ws, sub)
            port = free_port()
            text = config.read_text(encoding="utf-8").replace(
                "port = 0", f'port = {port}\npublic_url = "http://127.0.0.1:{port}"'
            )
            config.write_text(text, encoding="utf-8")
            env = {
                **os.environ,
                **ENV,
                "SB_TEST_TRELLO_APP_SECRET": trello_secret,
                "SB_TEST_PD_HOOK_PASSWORD": PD_HOOK_PASSWORD,
                "COLUMNS": "200",
            }
            yield World(sub, config, port, env, f"sqlite:///{ws / 'salesbridge.db'}")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _propose_one(tools: dict[str, Tool]) -> None:
    """Move one open Pipedrive deal and one open Asana task to the proposal stage, so the
    first sync gives each a Trello card (the demo's board takes proposals) whatever the
    generated data holds."""
    from bridge.demo import PD_STAGES
    from connectors.asana.seed import SECTIONS

    pd: Any = tools["pipedrive"].emulator
    deal = next(r for r in tools["pipedrive"].refs if pd.deals[int(r)]["status"] == "open")
    assert tools["pipedrive"].edit is not None and tools["asana"].edit is not None
    tools["pipedrive"].edit(deal, {"stage": PD_STAGES[2]})
    asana: Any = tools["asana"].emulator
    task = next(r for r in tools["asana"].refs if not asana.state.tasks[r]["completed"])
    tools["asana"].edit(task, {"section": SECTIONS[2]})


@pytest.fixture(scope="module")
def service(world: World) -> Iterator[Proc]:
    """The first service: webhooks only (polling an hour away)."""
    set_interval(world, "1h")
    proc = Proc(world)
    try:
        yield proc
    finally:
        proc.close()


def linked_pairs(world: World) -> dict[str, tuple[str, str]]:
    """For Pipedrive and Asana, one record linked to a Trello card (the demo links some)."""
    store = Store.open(world.store_url)
    try:
        out: dict[str, tuple[str, str]] = {}
        for kind in ("pipedrive", "asana"):
            for link in store.links_for_connector(kind):
                cards = store.links_for_project(link.project_id)
                trello = [lk.ref for lk in cards if lk.connector == "trello"]
                if trello:
                    out[kind] = (link.ref, trello[0])
                    break
        return out
    finally:
        store.close()


# --------------------------------------------------------------------------- the story


def test_starts_syncs_everything_and_refuses_a_second_instance(world: World, service: Proc) -> None:
    service.wait_line(r"salesbridge running: http://127\.0\.0\.1:\d+/healthz")

    def ready() -> bool:
        return requests.get(f"{world.url}/readyz", timeout=5).status_code == 200

    eventually(ready, 60, "every connector ready after its first cycle")
    health = requests.get(f"{world.url}/healthz", timeout=5).json()
    assert set(health["connectors"]) == set(KINDS)
    assert all(c["ready"] and c["result"] == "ok" for c in health["connectors"].values())
    world.pairs = linked_pairs(world)
    assert set(world.pairs) == {"pipedrive", "asana"}, "the demo links records across tools"

    second = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(world.config), "--port", "0"],
        cwd=world.config.parent,
        capture_output=True,
        text=True,
        env=world.env,
        timeout=60,
    )
    assert second.returncode == 2, second.stderr
    assert "another `salesbridge run`" in second.stderr
    assert f"pid {service.proc.pid}" in second.stderr
    assert service.proc.poll() is None, "the first instance is untouched"


def test_register_webhooks_twice_changes_nothing(world: World, service: Proc) -> None:
    for kind in KINDS:
        first = cli(world, "webhooks", "register", kind)
        again = cli(world, "webhooks", "register", kind)
        assert first["ids"] == again["ids"], kind
        assert first["url"] == f"{world.url}/webhooks/{kind}"
        listed = cli(world, "webhooks", "list", kind)
        assert [h["id"] for h in listed if h["url"] == first["url"]] == first["ids"], kind
    assert "webhook handshake for asana accepted" in service.text


@pytest.mark.parametrize(
    ("source", "rename", "read_source", "read_trello"),
    [
        ("pipedrive", pd_rename, pd_title, trello_name),
        ("asana", asana_rename, asana_name, trello_name),
    ],
)
def test_an_edit_reaches_the_other_tool_by_webhook_within_seconds(
    world: World,
    service: Proc,
    source: str,
    rename: Callable[[World, str, str], None],
    read_source: Callable[[World, str], str],
    read_trello: Callable[[World, str], str],
) -> None:
    ref, card = world.pairs[source]
    name = f"Webhook edit in {source} {time.monotonic_ns()}"
    mark = service.mark()
    rename(world, ref, name)
    if source == "asana":
        world.tools["asana"].emulator.deliver_webhooks()  # type: ignore[attr-defined]
    took = eventually(lambda: read_trello(world, card) == name, 10, f"{source} -> trello")
    assert took < 10
    assert re.search(rf"webhook for {source}: \d+ record", service.since(mark))
    assert "sync started: pull" in service.since(mark)


def test_and_back_from_trello_to_pipedrive(world: World, service: Proc) -> None:
    deal, card = world.pairs["pipedrive"]
    name = f"Webhook edit in trello {time.monotonic_ns()}"
    trello_rename(world, card, name)
    eventually(lambda: pd_title(world, deal) == name, 10, "trello -> pipedrive")


def test_forged_and_replayed_deliveries_are_rejected_and_change_nothing(
    world: World, service: Proc
) -> None:
    deal, card = world.pairs["pipedrive"]
    before = settle(world)
    names = (pd_title(world, deal), trello_name(world, card))
    mark = service.mark()
    url = f"{world.url}/webhooks/trello"
    body = json.dumps(
        {"action": {"id": "f" * 24, "type": "updateCard", "data": {"card": {"id": card}}}}
    ).encode()
    forged = requests.post(url, data=body, headers={"X-Trello-Webhook": "AAAA"}, timeout=10)
    assert forged.status_code == 401
    basic = base64.b64encode(b"salesbridge:guessed").decode()
    payload = {"meta": {"entity": "deal", "entity_id": deal, "action": "change"}, "data": {}}
    pd = requests.post(
        f"{world.url}/webhooks/pipedrive",
        json=payload,
        headers={"Authorization": f"Basic {basic}"},
        timeout=10,
    )
    assert pd.status_code == 401
    asana = f"{world.url}/webhooks/asana"
    events = json.dumps({"events": [{"resource": {"gid": "1", "resource_type": "task"}}]})
    forged_asana = requests.post(
        asana, data=events, headers={"X-Hook-Signature": "0" * 64}, timeout=10
    )
    assert forged_asana.status_code == 401
    sneaky = requests.post(asana, data=b"", headers={"X-Hook-Secret": "mine"}, timeout=10)
    assert sneaky.status_code == 401, "a handshake nobody announced is refused"
    assert "X-Hook-Secret" not in sneaky.headers
    signed = webhook_signature(body, url, world.env["SB_TEST_TRELLO_APP_SECRET"])
    ok = requests.post(url, data=body, headers={"X-Trello-Webhook": signed}, timeout=10)
    assert ok.status_code == 200, "a genuine delivery is accepted once"
    replay = requests.post(url, data=body, headers={"X-Trello-Webhook": signed}, timeout=10)
    assert replay.status_code == 401
    # The service logs a rejection as it answers; its log reaches us a moment later.
    eventually(lambda: "replayed delivery" in service.since(mark), 5, "the replay logged")
    log = service.since(mark)
    assert re.search(
        r"webhook for trello rejected from 127\.0\.0\.1: trello: the X-Trello-Webhook "
        r"signature does not match",
        log,
    ), log
    assert (
        "webhook for pipedrive rejected from 127.0.0.1: pipedrive: the delivery's basic-auth" in log
    )
    assert "webhook for trello rejected from 127.0.0.1: replayed delivery" in log
    assert "webhook for asana rejected from 127.0.0.1: asana: the X-Hook-Signature" in log
    assert "webhook handshake for asana rejected from 127.0.0.1" in log
    store = Store.open(world.store_url)
    try:
        assert "mine" not in store.get_meta("webhooks:asana:secrets")
    finally:
        store.close()
    after = settle(world)
    assert after - before == len(KINDS), "only the genuine delivery ran a cycle (one per tool)"
    assert (pd_title(world, deal), trello_name(world, card)) == names
    assert metric(world, "salesbridge_webhooks_total", result="rejected") >= 5


def test_health_and_metrics(world: World, service: Proc) -> None:
    health = requests.get(f"{world.url}/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["ready"] is True
    for c in health["connectors"].values():
        assert c["ready"] and c["lag_seconds"] is not None and c["last_ok"]
    text = requests.get(f"{world.url}/metrics", timeout=5).text
    for name in (
        "salesbridge_sync_cycles_total",
        "salesbridge_sync_duration_seconds_bucket",
        "salesbridge_http_requests",
        "salesbridge_http_rate_limited",
        "salesbridge_errors_total",
        "salesbridge_conflicts_total",
        "salesbridge_quarantined",
        "salesbridge_violations_open",
        "salesbridge_sync_lag_seconds",
        "salesbridge_webhooks_total",
    ):
        assert name in text, name
    assert metric(world, "salesbridge_http_requests", connector="trello") > 0
    assert metric(world, "salesbridge_sync_cycles_total", result="ok") >= len(KINDS)


def test_sigterm_mid_cycle_exits_cleanly_and_the_next_start_loses_nothing(
    world: World, service: Proc
) -> None:
    pd: Any = world.tools["pipedrive"].emulator
    trello: Any = world.tools["trello"].emulator
    deal, card = world.pairs["pipedrive"]
    task, task_card = world.pairs["asana"]
    settle(world)
    trello.controls.delay(0.5, path="/1/")  # every Trello call takes half a second
    try:
        mark = service.mark()
        name = f"Interrupted edit {time.monotonic_ns()}"
        pd_rename(world, deal, name)
        service.wait_line(r"sync started: pull pipedrive \(webhook\)", since=mark, timeout=15)
        time.sleep(0.3)
        interrupted = trello_name(world, card) != name  # the push is still on its way
        rc, seconds = service.stop(signal.SIGTERM, timeout=60)
    finally:
        trello.controls.reset()
    log = service.text
    assert rc == 0, log
    assert seconds < 30, f"took {seconds:.1f} s to stop"
    assert "received SIGTERM: finishing the current step" in log
    assert "salesbridge stopped cleanly" in log
    assert interrupted, "SIGTERM arrived before the push reached Trello (mid-cycle)"

    # Webhooks off: removed at the tools; edits made while the service is down.
    for kind in KINDS:
        removed = cli(world, "webhooks", "remove", kind)["removed"]
        assert len(removed) >= 1, kind
        assert cli(world, "webhooks", "remove", kind)["removed"] == [], "nothing left to remove"
    pd.flush_webhooks()
    down = f"Edited while down {time.monotonic_ns()}"
    asana_rename(world, task, down)

    set_interval(world, "2s")
    again = Proc(world, log_format="json")
    try:
        eventually(lambda: trello_name(world, card) == name, 20, "the interrupted update")
        eventually(lambda: trello_name(world, task_card) == down, 20, "the edit made while down")
        polled = f"Polled edit {time.monotonic_ns()}"
        trello_rename(world, card, polled)
        took = eventually(lambda: pd_title(world, deal) == polled, 15, "trello -> pipedrive")
        assert took < 15
        assert "webhook for" not in again.text, "no webhooks: this was polling"
        rc, seconds = again.stop(signal.SIGINT, timeout=60)
    finally:
        again.close()
    assert rc == 0, again.text
    records = [json.loads(line) for line in again.lines if line.startswith("{")]
    events = {r.get("event") for r in records}
    assert {"started", "sync_started", "sync_finished", "stopping", "stopped"} <= events
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    everything = service.text + again.text
    for secret in [*ENV.values(), PD_HOOK_PASSWORD, world.env["SB_TEST_TRELLO_APP_SECRET"]]:
        assert secret not in everything

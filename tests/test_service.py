"""The service's parts in process: job errors and misses become alerts that `status` shows,
the instance lock, JSON logs without secrets, and Jira's and Pipedrive's webhook checks.

The whole service against the tools' emulators is tests/test_service_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from bridge.cli import app
from bridge.config import load_config
from bridge.errors import UserError, WebhookRejected
from bridge.logs import JsonFormatter, configure_logging, set_format
from bridge.runtime import open_runtime
from bridge.secrets import register_secret
from bridge.service import InstanceLock, Service, running
from connectors.jira.connector import JiraConfig, JiraConnector
from connectors.memory import MemoryBackend
from connectors.pipedrive.connector import PipedriveConfig, PipedriveConnector
from tests.conftest import REPO
from tests.test_cli import STAGES, TOOL_FIELDS


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """One file-backed memory tool with a record, polled every 5 minutes."""
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    (tmp_path / "salesbridge.toml").write_text(
        f"""
[service]
misfire_grace = "1s"

[connectors.crm]
kind = "memory"
path = "crm.json"
stage_values = {STAGES}
fields = {TOOL_FIELDS}
""",
        encoding="utf-8",
    )
    MemoryBackend(tmp_path / "crm.json").add({"Title": "Acme rollout", "Status": "Backlog"})
    return tmp_path


@pytest.fixture
def service(workspace: Path) -> Iterator[Service]:
    loaded = load_config(workspace / "salesbridge.toml")
    with open_runtime(loaded) as rt:
        svc = Service(rt)
        try:
            yield svc
        finally:
            if svc.scheduler.running:
                svc.stop()


def status(workspace: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["status", "--config", str(workspace / "salesbridge.toml"), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return {r["connector"]: r for r in rows}


def wait_for(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_failing_job_is_an_alert_in_status_until_a_good_cycle(
    service: Service, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the engine fell over")

    real = service.rt.engine.run
    monkeypatch.setattr(service.rt.engine, "run", boom)
    service.scheduler.start()
    wait_for(lambda: service.rt.store.open_alerts("crm", kind="job_error"))
    alerts = status(workspace)["crm"]["alerts"]
    assert any("sync:crm" in a and "the engine fell over" in a for a in alerts), alerts

    monkeypatch.setattr(service.rt.engine, "run", real)
    service.scheduler.modify_job("sync:crm", next_run_time=datetime.now(UTC))
    wait_for(lambda: not service.rt.store.open_alerts("crm", kind="job_error"))
    assert status(workspace)["crm"]["result"] == "ok"


def test_a_missed_run_is_recorded_once(service: Service, workspace: Path) -> None:
    late = datetime.now(UTC) - timedelta(minutes=3)
    service.scheduler.start(paused=True)
    service.scheduler.modify_job("sync:crm", next_run_time=late)
    service.scheduler.modify_job("reconcile:crm", next_run_time=late)
    service.scheduler.resume()
    wait_for(lambda: len(service.rt.store.open_alerts("crm", kind="job_missed")) == 2)
    alerts = status(workspace)["crm"]["alerts"]
    assert any(a.startswith("sync:crm: missed its run") for a in alerts), alerts
    service.scheduler.modify_job("sync:crm", next_run_time=late)
    time.sleep(0.5)
    assert len(service.rt.store.open_alerts("crm", kind="job_missed")) == 2, "not doubled"


def test_health_before_and_after_the_first_cycle(service: Service) -> None:
    with running(service, host="127.0.0.1", port=0) as url:
        wait_for(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200)
        body = requests.get(f"{url}/healthz", timeout=5).json()
        assert body["connectors"]["crm"]["ready"] is True
        unknown = requests.post(f"{url}/webhooks/nope", data=b"{}", timeout=5)
        assert unknown.status_code == 404
        memory = requests.post(f"{url}/webhooks/crm", data=b"{}", timeout=5)
        assert memory.status_code == 401, "a connector without webhooks rejects deliveries"
        assert requests.head(f"{url}/webhooks/crm", timeout=5).status_code == 200


def test_a_second_instance_lock_names_the_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    first = InstanceLock(url, ["crm"])
    first.acquire()
    try:
        with pytest.raises(UserError, match=r"another `salesbridge run` \(pid \d+\)"):
            InstanceLock(url, ["crm"]).acquire()
    finally:
        first.release()
    again = InstanceLock(url, ["crm"])
    again.acquire()  # released: free again
    again.release()
    InstanceLock("sqlite:///:memory:", ["crm"]).acquire()  # private: nothing to lock


def test_json_logs_carry_extras_and_no_secret() -> None:
    register_secret("tok-very-secret-123")
    stream = io.StringIO()
    configure_logging("info", "json")
    root = logging.getLogger()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        log = logging.getLogger("salesbridge.test")
        log.info("calling with tok-very-secret-123", extra={"event": "x", "connector": "crm"})
        try:
            raise ValueError("token tok-very-secret-123 refused")
        except ValueError:
            log.exception("failed")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert lines[0]["event"] == "x" and lines[0]["connector"] == "crm"
        assert lines[0]["level"] == "info" and lines[0]["logger"] == "salesbridge.test"
        assert "exception" in lines[1]
        assert "tok-very-secret-123" not in stream.getvalue()
        set_format("human")
        assert not isinstance(handler.formatter, JsonFormatter)
    finally:
        configure_logging("warning")


def test_jira_checks_x_hub_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_JIRA_HOOK", "jira-hook-secret")
    config = JiraConfig.model_validate(
        {
            "url": "https://example.atlassian.net",
            "token": "env:SB_TEST_JIRA_HOOK",
            "jql": "project = SALES",
            "webhook_secret": "env:SB_TEST_JIRA_HOOK",
        }
    )
    conn = JiraConnector("jira", config)
    body = json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": "SALES-7"}})
    sig = hmac.new(b"jira-hook-secret", body.encode(), hashlib.sha256).hexdigest()
    url = "https://bridge.example/webhooks/jira"
    assert conn.verify_webhook({"x-hub-signature": f"sha256={sig}"}, body.encode(), url) == [
        "SALES-7"
    ]
    for headers, data in (
        ({"x-hub-signature": f"sha256={sig}"}, body.encode() + b" "),
        ({"x-hub-signature": f"sha1={sig}"}, body.encode()),
        ({}, body.encode()),
    ):
        with pytest.raises(WebhookRejected):
            conn.verify_webhook(headers, data, url)
    unset = JiraConnector("jira", config.model_copy(update={"webhook_secret": None}))
    with pytest.raises(WebhookRejected, match="set webhook_secret"):
        unset.verify_webhook({"x-hub-signature": f"sha256={sig}"}, body.encode(), url)


def test_pipedrive_checks_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_PD", "pd-secret")
    config = PipedriveConfig.model_validate(
        {"token": "env:SB_TEST_PD", "webhook_password": "env:SB_TEST_PD"}
    )
    conn = PipedriveConnector("pd", config)
    body = json.dumps({"meta": {"entity": "deal", "entity_id": "42"}, "data": {}}).encode()
    good = "Basic " + base64.b64encode(b"salesbridge:pd-secret").decode()
    assert conn.verify_webhook({"authorization": good}, body, "u") == ["42"]
    bad = "Basic " + base64.b64encode(b"salesbridge:guess").decode()
    for headers, data in (
        ({"authorization": bad}, body),
        ({}, body),
        ({"authorization": good}, b"x"),
    ):
        with pytest.raises(WebhookRejected):
            conn.verify_webhook(headers, data, "u")


def test_webhooks_command_explains_what_it_cannot_do(workspace: Path) -> None:
    import bridge.cli_webhooks  # noqa: F401 - registers `salesbridge webhooks`

    config = str(workspace / "salesbridge.toml")
    runner = CliRunner()
    no_url = runner.invoke(app, ["webhooks", "register", "crm", "--config", config])
    assert isinstance(no_url.exception, UserError), no_url.output
    assert "set [service] public_url" in str(no_url.exception)
    memory = runner.invoke(
        app, ["webhooks", "register", "crm", "--config", config, "--url", "http://x/webhooks/crm"]
    )
    assert isinstance(memory.exception, UserError), memory.output
    assert "cannot manage memory webhooks" in str(memory.exception)


def test_recipients_due_together_share_one_digest_job(workspace: Path) -> None:
    config = workspace / "salesbridge.toml"
    people = "".join(
        f"""
[recipients.{r}]
name = "{r.upper()}"
email = "{r}@example.com"
teams = ["sales"]
schedule = "0 8 * * mon"
timezone = "{tz}"
"""
        for r, tz in (("a", "Asia/Shanghai"), ("b", "Asia/Shanghai"), ("c", "Europe/Berlin"))
    )
    config.write_text(
        config.read_text(encoding="utf-8")
        + '\n[teams.sales]\nlabel = "Sales"\nlabel_zh = "销售"\n'
        + '\n[smtp]\nhost = "127.0.0.1"\nsender = "bridge@example.com"\n'
        + people,
        encoding="utf-8",
    )
    with open_runtime(load_config(config)) as rt:
        svc = Service(rt)
        jobs = {j.id: j.args for j in svc.scheduler.get_jobs() if j.id.startswith("digest:")}
    assert jobs == {"digest:a,b": ("a", "b"), "digest:c": ("c",)}

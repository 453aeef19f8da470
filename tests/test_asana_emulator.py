"""The Asana emulator's fidelity: responses valid against the official OpenAPI description, the
official client parses them, and events, webhooks, batch, auth and faults behave as Asana's."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asana
import pytest
import requests
from openapi_core import OpenAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bridge.emulator import EmulatorServer
from connectors.asana.emulator import sign
from connectors.base import Cursor
from tests.contract import new_stamp
from tests.test_asana_support import BOT_TOKEN, HUMAN, AsanaWorld, SpecCheck, load_spec, world


@pytest.fixture(scope="session")
def asana_spec(shared_dir: Path) -> OpenAPI:
    return load_spec(shared_dir)


@pytest.fixture
def checked(asana_spec: OpenAPI) -> Iterator[tuple[AsanaWorld, SpecCheck]]:
    for w in world(tasks=12):
        check = SpecCheck(asana_spec)
        w.emulator.controls.on_response(check)
        yield w, check


def api(w: AsanaWorld, token: str = BOT_TOKEN) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


def url(w: AsanaWorld, path: str) -> str:
    return w.emulator.api_url + path


# --------------------------------------------------------------------------- fidelity


def test_every_response_of_a_full_workload_is_valid_against_the_spec(
    checked: tuple[AsanaWorld, SpecCheck],
) -> None:
    w, check = checked
    c, person = w.connector(page_size=5), w.person()
    c.check()
    c.discover()
    pages = list(c.pull(Cursor(), signpost=datetime.now(UTC)))
    cursor = pages[-1].cursor
    assert cursor is not None
    created = c.create(
        {"Name": "Spec check", "Section": "Proposal", "Priority": "High", "Region": ["APAC"],
         "Team": [HUMAN], "Close date": "2026-05-01", "Amount": 10,
         "Subtasks": [{"title": "a", "done": False, "due": None, "owner": None}],
         "Comments": [{"what": "hi", "at": "2026-01-01T00:00:00Z", "by": None}]},
        stamp=new_stamp(),
    )  # fmt: skip
    person.update(created.ref, {"Section": "Signed", "Name": "Spec check 2"}, expected_version=None)
    list(c.pull(cursor, signpost=datetime.now(UTC)))
    others = w.seeded.tasks[:3]
    written = c.update_many(  # reads, section moves and PUTs through the batch API
        {
            others[0]: {"Name": "Batch 1", "Section": "Signed"},
            others[1]: {"Section": "Proposal"},
            others[2]: {"Amount": 20, "Comments": [{"what": "x", "at": "2026-01-01T00:00:00Z"}]},
        },
        {},
    )
    assert all(not isinstance(r, Exception) for r in written.values()), written
    s = api(w)
    pipeline = w.seeded.pipeline
    for path in (
        "/workspaces",
        f"/workspaces/{w.seeded.workspace}",
        f"/workspaces/{w.seeded.workspace}/projects",
        f"/workspaces/{w.seeded.workspace}/custom_fields",
        f"/workspaces/{w.seeded.workspace}/users",
        f"/projects/{pipeline}",
        f"/projects/{pipeline}/sections",
        f"/projects/{pipeline}/custom_field_settings",
        f"/projects/{pipeline}/tasks",
        f"/sections/{w.section('Signed')}/tasks",
        f"/sections/{w.section('Signed')}",
        f"/tasks/{created.ref}",
        f"/tasks/{created.ref}/subtasks",
        f"/tasks/{created.ref}/stories",
        f"/custom_fields/{w.field('Priority')}",
        "/users/me",
        "/webhooks?workspace=" + w.seeded.workspace,
    ):
        assert s.get(url(w, path)).status_code == 200, path
    assert s.get(url(w, f"/tasks/{created.ref}"), params={"opt_fields": "name"}).ok
    assert s.get(url(w, "/tasks/1")).status_code == 404
    assert s.get(url(w, "/tasks"), params={"project": pipeline, "limit": 500}).status_code == 400
    assert s.get(url(w, "/events"), params={"resource": pipeline}).status_code == 412
    assert requests.get(url(w, "/users/me")).status_code == 401
    s.close()
    assert not check.failures, "\n".join(check.failures[:5])
    assert check.checked > 40
    assert check.undocumented == []


def test_the_official_client_parses_what_the_emulator_serves(
    checked: tuple[AsanaWorld, SpecCheck],
) -> None:
    """The asana package on its own urllib3 stack (not ours), with its own page iterator."""
    w, check = checked
    configuration = asana.Configuration()
    configuration.host = w.emulator.api_url
    configuration.access_token = BOT_TOKEN
    configuration.page_limit = 5
    client = asana.ApiClient(configuration)
    try:
        tasks = list(
            asana.TasksApi(client).get_tasks_for_project(
                w.seeded.pipeline, {"opt_fields": "name,custom_fields.display_value,modified_at"}
            )
        )
        assert len(tasks) == 12
        assert all(t["name"] and t["modified_at"] for t in tasks)
        sections = list(asana.SectionsApi(client).get_sections_for_project(w.seeded.pipeline, {}))
        assert [s["name"] for s in sections][:2] == ["Leads", "Qualified"]
        me = asana.UsersApi(client).get_user("me", {})
        assert me["email"] == "salesbridge@example.com"
        task = asana.TasksApi(client).get_task(tasks[0]["gid"], {})
        assert task["gid"] == tasks[0]["gid"]
        assert any(cf["name"] == "Priority" for cf in task["custom_fields"])
        stories = list(asana.StoriesApi(client).get_stories_for_task(tasks[0]["gid"], {}))
        assert isinstance(stories, list)
        fields = list(
            asana.CustomFieldSettingsApi(client).get_custom_field_settings_for_project(
                w.seeded.pipeline, {}
            )
        )
        assert {f["custom_field"]["type"] for f in fields} >= {"enum", "multi_enum", "people"}
        with pytest.raises(asana.rest.ApiException) as gone:
            asana.TasksApi(client).get_task("1", {})
        assert gone.value.status == 404
        assert json.loads(gone.value.body)["errors"][0]["message"]
    finally:
        client.rest_client.pool_manager.clear()
        client.pool.close()
        client.pool.join()
    assert not check.failures, "\n".join(check.failures[:5])


# --------------------------------------------------------------------------- events


def test_sync_tokens_412_then_events_with_has_more(asana_world: AsanaWorld) -> None:
    w = asana_world
    s = api(w)
    pipeline = w.seeded.pipeline
    first = s.get(url(w, "/events"), params={"resource": pipeline})
    assert first.status_code == 412
    token = first.json()["sync"]
    assert "Sync token invalid" in first.json()["errors"][0]["message"]
    empty = s.get(url(w, "/events"), params={"resource": pipeline, "sync": token}).json()
    assert (empty["data"], empty["has_more"]) == ([], False)
    user = w.seeded.users[HUMAN]
    for i in range(105):
        w.emulator.request("PUT", f"/tasks/{w.seeded.tasks[0]}", user=user, data={"name": f"n{i}"})
    page = s.get(url(w, "/events"), params={"resource": pipeline, "sync": empty["sync"]}).json()
    assert (len(page["data"]), page["has_more"]) == (100, True)
    assert page["data"][0]["change"]["field"] == "name"
    assert page["data"][0]["user"]["gid"] == user
    rest = s.get(url(w, "/events"), params={"resource": pipeline, "sync": page["sync"]}).json()
    assert (len(rest["data"]), rest["has_more"]) == (5, False)
    w.state.expire_sync_tokens()
    assert (
        s.get(url(w, "/events"), params={"resource": pipeline, "sync": rest["sync"]}).status_code
        == 412
    )
    other = s.get(
        url(w, "/events"), params={"resource": w.seeded.other_project, "sync": rest["sync"]}
    )
    assert other.status_code == 412  # a token belongs to its resource
    s.close()


@pytest.fixture
def asana_world() -> Iterator[AsanaWorld]:
    yield from world(tasks=3)


# --------------------------------------------------------------------------- webhooks


class Receiver:
    """A webhook target: answers the handshake, keeps deliveries."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await request.body()
        secret = request.headers.get("x-hook-secret")
        if secret is not None:
            headers = {"X-Hook-Secret": secret} if self.echo else {}
            response = Response(status_code=200, headers=headers)
        else:
            self.deliveries.append((dict(request.headers), body))
            response = Response(status_code=200)
        await response(scope, receive, send)


def test_webhook_handshake_and_signed_deliveries(asana_world: AsanaWorld) -> None:
    w = asana_world
    receiver = Receiver()
    with EmulatorServer(receiver, name="receiver") as target:
        s = api(w)
        made = s.post(
            url(w, "/webhooks"),
            json={"data": {"resource": w.seeded.pipeline, "target": target.base_url + "/hook"}},
        )
        assert made.status_code == 201
        secret = made.json()["X-Hook-Secret"]
        assert made.json()["data"]["active"] is True
        user = w.seeded.users[HUMAN]
        w.emulator.request("PUT", f"/tasks/{w.seeded.tasks[1]}", user=user, data={"name": "Hooked"})
        assert w.emulator.deliver_webhooks() == 1
        headers, body = receiver.deliveries[0]
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-hook-signature"] == expected == sign(secret, body)
        event = json.loads(body)["events"][0]
        assert event["resource"] == {"gid": w.seeded.tasks[1], "resource_type": "task"}
        s.close()
    with EmulatorServer(Receiver(echo=False), name="receiver") as rude:
        refused = api(w).post(
            url(w, "/webhooks"),
            json={"data": {"resource": w.seeded.pipeline, "target": rude.base_url}},
        )
        assert refused.status_code == 400
        assert "handshake" in refused.json()["errors"][0]["message"]


# --------------------------------------------------------------------------- batch, auth, faults


def test_batch_runs_up_to_ten_actions(asana_world: AsanaWorld) -> None:
    w = asana_world
    s = api(w)
    actions: list[dict[str, Any]] = [
        {"relative_path": f"/tasks/{t}", "method": "get", "options": {"fields": ["name"]}}
        for t in w.seeded.tasks
    ]
    actions.append({"relative_path": "/tasks/1", "method": "get"})
    actions.append(
        {"relative_path": f"/tasks/{w.seeded.tasks[0]}", "method": "put", "data": {"name": "B"}}
    )
    got = s.post(url(w, "/batch"), json={"data": {"actions": actions}}).json()["data"]
    assert [r["status_code"] for r in got] == [200, 200, 200, 404, 200]
    assert set(got[0]["body"]["data"]) == {"gid", "name"}
    assert w.state.tasks[w.seeded.tasks[0]]["name"] == "B"
    too_many = s.post(url(w, "/batch"), json={"data": {"actions": actions * 3}})
    assert too_many.status_code == 400
    assert w.emulator.controls.count("POST", "/api/1.0/batch") == 2
    s.close()


def test_auth_rate_limits_and_injected_errors(asana_world: AsanaWorld) -> None:
    w = asana_world
    s = api(w)
    assert api(w, "wrong").get(url(w, "/users/me")).status_code == 401
    w.emulator.controls.rate_limit(2, 60)
    assert [s.get(url(w, "/users/me")).status_code for _ in range(3)] == [200, 200, 429]
    limited = s.get(url(w, "/users/me"))
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["errors"][0]["message"]
    w.emulator.controls.reset()
    w.emulator.controls.fail(500, times=1, path="/api/1.0/tasks")
    assert s.get(url(w, f"/tasks/{w.seeded.tasks[0]}")).status_code == 500
    assert s.get(url(w, f"/tasks/{w.seeded.tasks[0]}")).status_code == 200
    s.close()


def test_pagination_offsets_and_modified_since(asana_world: AsanaWorld) -> None:
    w = asana_world
    s = api(w)
    pipeline = w.seeded.pipeline
    first = s.get(url(w, "/tasks"), params={"project": pipeline, "limit": 2}).json()
    assert len(first["data"]) == 2
    nxt = first["next_page"]
    assert nxt["path"].startswith("/tasks?") and nxt["uri"].endswith(nxt["offset"])
    second = s.get(
        url(w, "/tasks"), params={"project": pipeline, "limit": 2, "offset": nxt["offset"]}
    ).json()
    assert (len(second["data"]), second["next_page"]) == (1, None)
    bad = s.get(url(w, "/tasks"), params={"project": pipeline, "limit": 2, "offset": "nope"})
    assert bad.status_code == 400
    stamp = w.state.now()
    w.emulator.request("PUT", f"/tasks/{w.seeded.tasks[2]}", user=w.seeded.bot, data={"notes": "x"})
    since = s.get(url(w, "/tasks"), params={"project": pipeline, "modified_since": stamp}).json()
    assert [t["gid"] for t in since["data"]] == [w.seeded.tasks[2]]
    s.close()

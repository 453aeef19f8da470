"""``salesbridge webhooks register|list|remove CONNECTOR``: the tools' subscriptions.

The callback URL is ``<[service] public_url>/webhooks/<connector>`` unless ``--url`` says
otherwise; the service must be running there for tools that check the URL when a webhook is
made (Trello's HEAD, Asana's ``X-Hook-Secret`` handshake). Registering is idempotent: a
webhook already sending the same events to the same URL is kept, not doubled.

Jira and Salesforce webhooks are set up in the tool's admin (see the connector docs); this
command says so instead of guessing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from bridge.cli import ConfigOpt, JsonOpt, app, console, load, print_json
from bridge.config import LoadedConfig
from bridge.errors import UserError
from connectors.base import Connector, ConnectorConfig

webhooks_app = typer.Typer(
    help="Register, list and remove the tools' webhooks (idempotent).", no_args_is_help=True
)
app.add_typer(webhooks_app, name="webhooks")

ConnectorArg = Annotated[str, typer.Argument(help="Configured connector name.")]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Callback URL [default: <[service] public_url>/webhooks/<connector>].",
        show_default=False,
    ),
]

MANAGED = ("trello", "asana", "pipedrive")


def callback_url(loaded: LoadedConfig, name: str, url: str | None = None) -> str:
    if url:
        return url
    public = loaded.config.service.public_url
    if not public:
        raise UserError(
            "set [service] public_url (the URL the tools reach `salesbridge run` at) or pass --url"
        )
    return f"{public.rstrip('/')}/webhooks/{name}"


def _managed(conn: Connector[ConnectorConfig]) -> None:
    if conn.kind not in MANAGED:
        how = {
            "jira": "in Jira (Settings > System > WebHooks) with the same secret as the "
            "connector's webhook_secret",
            "salesforce": "in Salesforce (Outbound Messages or Change Data Capture)",
        }.get(conn.kind, "in the tool")
        raise UserError(
            f"{conn.name}: salesbridge cannot manage {conn.kind} webhooks through its API; "
            f"create one {how}, pointing at the receiver's /webhooks/{conn.name}"
        )


def _row(kind: str, hook: dict[str, Any]) -> dict[str, Any]:
    """One webhook in a shape common to every tool."""
    if kind == "trello":
        return {
            "id": hook.get("id"),
            "url": hook.get("callbackURL"),
            "watches": hook.get("idModel"),
            "active": bool(hook.get("active", True)),
        }
    if kind == "asana":
        return {
            "id": hook.get("gid"),
            "url": hook.get("target"),
            "watches": (hook.get("resource") or {}).get("gid"),
            "active": bool(hook.get("active", True)),
        }
    return {
        "id": str(hook.get("id")),
        "url": hook.get("subscription_url"),
        "watches": f"{hook.get('event_object')}.{hook.get('event_action')}",
        "active": bool(hook.get("is_active", True)),
    }


def _list(conn: Any) -> list[dict[str, Any]]:
    return [_row(conn.kind, h) for h in conn.list_webhooks()]


def register_webhooks(loaded: LoadedConfig, name: str, url: str | None = None) -> list[str]:
    """Register ``name``'s webhooks at the callback URL (idempotent); returns their ids."""
    from bridge.runtime import build_connector
    from bridge.service import handshake_key, secrets_key
    from bridge.store import Store

    target = callback_url(loaded, name, url)
    with build_connector(loaded, name) as conn:
        _managed(conn)
        tool: Any = conn
        if conn.kind == "trello":
            return [str(i) for i in tool.register_webhooks(target)]
        if conn.kind == "pipedrive":
            return [str(tool.register_webhook(target)["id"])]
        # Asana: the service answers the handshake only when told one is coming.
        store = Store.open(loaded.store_url())
        try:
            if any(h["url"] == target and h["active"] for h in _list(tool)):
                hook = next(h for h in _list(tool) if h["url"] == target)
                return [str(hook["id"])]
            store.set_meta(handshake_key(name), datetime.now(UTC).isoformat())
            try:
                created = tool.register_webhook(target)
            finally:
                store.set_meta(handshake_key(name), None)
            if not store.get_meta(secrets_key(name)):
                raise UserError(
                    f"{name}: Asana made the webhook but the receiver at {target} recorded no "
                    "handshake secret; is `salesbridge run` serving there on the same store?"
                )
            return [str(created.get("gid"))]
        finally:
            store.close()


@webhooks_app.command("register")
def webhooks_register(
    connector: ConnectorArg, config: ConfigOpt = None, url: UrlOpt = None, as_json: JsonOpt = False
) -> None:
    """Subscribe the receiver to CONNECTOR's changes (registering twice changes nothing)."""
    loaded = load(config)
    target = callback_url(loaded, connector, url)
    ids = register_webhooks(loaded, connector, url)
    if as_json:
        print_json({"connector": connector, "url": target, "ids": ids})
        return
    console().print(f"{connector}: webhook(s) {', '.join(ids)} deliver to {target}")


@webhooks_app.command("list")
def webhooks_list(
    connector: ConnectorArg, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """The tool's webhooks (all of them the account can see, not only salesbridge's)."""
    from bridge.runtime import build_connector

    loaded = load(config)
    with build_connector(loaded, connector) as conn:
        _managed(conn)
        rows = _list(conn)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "url", "watches", "active", title=f"{connector} webhooks")
    for r in rows:
        table.add_row(
            str(r["id"]), str(r["url"]), str(r["watches"]), "yes" if r["active"] else "no"
        )
    console().print(table)


@webhooks_app.command("remove")
def webhooks_remove(
    connector: ConnectorArg,
    config: ConfigOpt = None,
    url: UrlOpt = None,
    webhook_id: Annotated[
        str | None, typer.Option("--id", help="Remove this webhook instead of the URL's.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove the webhooks delivering to the callback URL (or the one --id names)."""
    from bridge.runtime import build_connector
    from bridge.service import secrets_key
    from bridge.store import Store

    loaded = load(config)
    with build_connector(loaded, connector) as conn:
        _managed(conn)
        tool: Any = conn
        rows = _list(tool)
        if webhook_id is not None:
            doomed = [r for r in rows if str(r["id"]) == webhook_id]
            if not doomed:
                raise UserError(f"{connector}: no webhook {webhook_id!r} (see `webhooks list`)")
        else:
            target = callback_url(loaded, connector, url)
            doomed = [r for r in rows if r["url"] == target]
        removed = [str(r["id"]) for r in doomed if tool.remove_webhook(r["id"])]
        if conn.kind == "asana" and not any(r not in doomed for r in rows):
            store = Store.open(loaded.store_url())
            try:
                store.set_meta(secrets_key(connector), [])  # no webhook left to sign anything
            finally:
                store.close()
    if as_json:
        print_json({"connector": connector, "removed": removed})
        return
    console().print(f"{connector}: removed {len(removed)} webhook(s) {', '.join(removed)}".rstrip())

"""``salesbridge run``: the service in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from bridge.cli import ConfigOpt, app, console, load

log = logging.getLogger("salesbridge.service")


@app.command()
def run(
    config: ConfigOpt = None,
    connector: Annotated[
        list[str] | None,
        typer.Option("--connector", help="Run only these connectors (repeatable)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [default: from config].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: from config].")] = None,
) -> None:
    """Run the bridge: scheduled syncs, rule sweeps, digests, webhooks, /healthz, /metrics."""
    from bridge.runtime import open_runtime
    from bridge.service import InstanceLock, Service, running

    loaded = load(config)
    svc_cfg = loaded.config.service
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("received %s: finishing the current step", signal.Signals(signum).name)
        stop.set()

    with open_runtime(loaded, only=connector or None) as rt:
        lock = InstanceLock(loaded.store_url(), list(rt.connectors))
        lock.acquire(rt.store)
        try:
            service = Service(rt)
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            with running(
                service, host=host or svc_cfg.host, port=svc_cfg.port if port is None else port
            ) as url:
                console(stderr=True).print(
                    f"salesbridge running: {url}/healthz, {url}/metrics, "
                    f"{url}/webhooks/<connector>; {len(rt.connectors)} connector(s)"
                )
                while not stop.wait(0.5):
                    pass
        finally:
            lock.release()
    console(stderr=True).print("salesbridge stopped cleanly")

"""``salesbridge run``: the service in the foreground until SIGTERM or SIGINT.

The first signal stops scheduling; the run in progress finishes its step (a page or a push),
commits, and the process exits 0. A second ``run`` on the same SQLite store exits 2 at once,
before talking to any tool.
"""

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
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="human or json (one object per line) [default: the global --log-format].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the bridge: scheduled syncs, rule sweeps, digests, webhooks, /healthz, /metrics."""
    from bridge.errors import UserError
    from bridge.logs import set_format
    from bridge.runtime import open_runtime
    from bridge.service import InstanceLock, Service, running

    if log_format is not None:
        if log_format not in ("human", "json"):
            raise UserError(f"--log-format must be human or json, not {log_format!r}")
        set_format("json" if log_format == "json" else "human")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # One line per job run is noise next to ours ("sync started/finished").
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    loaded = load(config)
    svc_cfg = loaded.config.service
    names = connector or [n for n, c in loaded.connectors.items() if c.enabled]
    store_url = loaded.store_url()
    lock = InstanceLock(store_url, names)
    sqlite = store_url.startswith("sqlite:///")
    if sqlite:
        lock.acquire(None)  # before any tool is asked anything: a second run fails fast
    stop = threading.Event()
    service: Service | None = None

    def on_signal(signum: int, _frame: object) -> None:
        log.warning(
            "received %s: finishing the current step",
            signal.Signals(signum).name,
            extra={"event": "stopping"},
        )
        stop.set()
        if service is not None:
            service.begin_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with open_runtime(loaded, only=names) as rt:
            if not sqlite:
                lock.acquire(rt.store)
            service = Service(rt)
            if stop.is_set():
                return
            with running(
                service, host=host or svc_cfg.host, port=svc_cfg.port if port is None else port
            ) as url:
                log.info(
                    "salesbridge running at %s with %d connector(s)",
                    url,
                    len(rt.connectors),
                    extra={"event": "started", "url": url, "connectors": list(rt.connectors)},
                )
                console(stderr=True).print(
                    f"salesbridge running: {url}/healthz, {url}/metrics, "
                    f"{url}/webhooks/<connector>; {len(rt.connectors)} connector(s)"
                )
                while not stop.wait(0.5):
                    pass
    finally:
        lock.release()
    log.info("salesbridge stopped cleanly", extra={"event": "stopped"})
    console(stderr=True).print("salesbridge stopped cleanly")

"""``salesbridge run``: the long-running bridge.

One process holds: an APScheduler 3.x scheduler (a sync job and a reconcile job per connector,
a rule sweep, digests on cron in the recipients' timezones), and one HTTP server (the same
Starlette + uvicorn stack as the emulators) for webhooks, ``/healthz`` and ``/metrics``.

Engine runs are serialised by one lock: a webhook-triggered sync waits for a scheduled one
instead of racing it on the same store. Webhooks only mark their connector as pending; one
worker thread drains the pending set, so a burst of deliveries costs one run, not one each.
Polling stays on as reconciliation, because webhooks get lost.

Asana's webhooks are created with a handshake: Asana POSTs ``X-Hook-Secret`` to the receiver,
which must echo it; later deliveries are signed with that secret. The handshake is accepted
only while ``salesbridge webhooks register`` has announced one (a marker in the store, for
:data:`HANDSHAKE_WINDOW` seconds), and its secret is kept in the store's meta table.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.config import LoadedConfig
from bridge.errors import SalesbridgeError, UserError, WebhookRejected
from bridge.runtime import Runtime
from bridge.sync import SyncReport

log = logging.getLogger("salesbridge.service")

REPLAY_WINDOW = 600.0  # seconds a delivery's digest is remembered
HANDSHAKE_WINDOW = 300.0  # seconds a `webhooks register` waits for the tool's handshake
STOP_TIMEOUT = 60.0  # seconds `stop()` waits for a webhook-triggered run to finish its step


def secrets_key(connector: str) -> str:
    """Store meta key of the webhook secrets learnt from ``connector``'s handshakes."""
    return f"webhooks:{connector}:secrets"


def handshake_key(connector: str) -> str:
    """Store meta key: when ``webhooks register`` last announced a handshake (ISO time)."""
    return f"webhooks:{connector}:handshake"


class Metrics:
    """Prometheus metrics in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter(
            "salesbridge_sync_cycles", "Sync cycles", ["connector", "result"], registry=r
        )
        self.duration = Histogram(
            "salesbridge_sync_duration_seconds", "Sync cycle duration", ["connector"], registry=r
        )
        self.records = Counter(
            "salesbridge_sync_records", "Records by outcome", ["connector", "outcome"], registry=r
        )
        self.conflicts = Counter(
            "salesbridge_conflicts", "Conflicts detected", ["connector"], registry=r
        )
        self.errors = Counter(
            "salesbridge_errors", "Failed cycles and jobs", ["source"], registry=r
        )
        self.webhooks = Counter(
            "salesbridge_webhooks", "Webhook deliveries", ["connector", "result"], registry=r
        )
        self.requests = Gauge(
            "salesbridge_http_requests", "HTTP requests sent to the tool", ["connector"], registry=r
        )
        self.rate_limited = Gauge(
            "salesbridge_http_rate_limited", "429 answers from the tool", ["connector"], registry=r
        )
        self.quarantined = Gauge(
            "salesbridge_quarantined", "Records in quarantine", ["connector"], registry=r
        )
        self.violations = Gauge("salesbridge_violations_open", "Open rule violations", registry=r)
        self.lag = Gauge(
            "salesbridge_sync_lag_seconds",
            "Seconds since the last good cycle",
            ["connector"],
            registry=r,
        )


@dataclass
class ConnectorHealth:
    last_run: datetime | None = None
    last_ok: datetime | None = None
    result: str = "never"
    error: str | None = None
    pulled: bool = False
    """A cycle has pulled this connector (readiness: its records are in the hub)."""


@dataclass
class ServiceState:
    health: dict[str, ConnectorHealth] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class InstanceLock:
    """Refuse a second ``run`` on the same store.

    SQLite: an exclusive ``flock`` on ``<db>.lock``. PostgreSQL: a session advisory lock per
    connector, so instances configured with disjoint connectors may share one database.
    """

    def __init__(self, store_url: str, connectors: list[str]) -> None:
        self.store_url = store_url
        self.connectors = connectors
        self._fd: int | None = None
        self._pg: Any = None

    def acquire(self, store: Any = None) -> None:
        """Take the lock or raise UserError (exit 2). ``store`` is needed for PostgreSQL only."""
        if self.store_url == "sqlite:///:memory:":
            return  # a private database: nobody to share it with
        if self.store_url.startswith("sqlite:///"):
            path = Path(self.store_url.removeprefix("sqlite:///") + ".lock")
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    holder = f" (pid {int(path.read_text().strip())})"
                raise UserError(
                    f"another `salesbridge run`{holder} is using this store "
                    f"({self.store_url.removeprefix('sqlite:///')}); stop it first, or use "
                    "PostgreSQL and give each instance its own connectors"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return
        import sqlalchemy as sa

        if store is None:
            raise ValueError("a PostgreSQL instance lock needs the open store")
        conn = store.engine.connect()
        for name in self.connectors:
            key = int.from_bytes(
                hashlib.sha256(f"salesbridge:{name}".encode()).digest()[:8], "big", signed=True
            )
            got = conn.execute(sa.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                conn.close()
                raise UserError(
                    f"connector {name!r} is already run by another instance on this database; "
                    "give each instance its own connectors with --connector"
                )
        self._pg = conn

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._pg is not None:
            self._pg.close()  # ends the session, releasing its advisory locks
            self._pg = None


class Service:
    """The scheduler, the HTTP endpoints and the lock around engine runs."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], datetime] | None = None) -> None:
        self.rt = runtime
        self.loaded: LoadedConfig = runtime.loaded
        self.metrics = Metrics()
        self.state = ServiceState(health={n: ConnectorHealth() for n in runtime.connectors})
        self.clock = clock or (lambda: datetime.now(UTC))
        self._run_lock = threading.Lock()
        self._stopping = threading.Event()
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.scheduler = self._build_scheduler()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------------ sync

    def sync(
        self, names: list[str] | None = None, *, full: bool = False, why: str = "schedule"
    ) -> SyncReport | None:
        """One engine run (pull ``names``, push to every connector), serialised with others."""
        if self._stopping.is_set():
            return None
        names = names or list(self.rt.connectors)
        with self._run_lock:
            if self._stopping.is_set():
                return None
            log.info(
                "sync started: pull %s (%s%s)",
                ", ".join(names),
                why,
                ", full" if full else "",
                extra={"event": "sync_started", "connectors": names, "why": why},
            )
            started = time.monotonic()
            try:
                report = self.rt.engine.run(
                    names,
                    full=full,
                    push_to=list(self.rt.connectors),
                    should_stop=self._stopping.is_set,
                )
            except SalesbridgeError as exc:
                self.metrics.errors.labels("sync").inc()
                log.error(
                    "sync of %s failed: %s",
                    ", ".join(names),
                    exc,
                    extra={"event": "sync_failed", "connectors": names},
                )
                for name in names:
                    self._alert(name, "sync_error", str(exc))
                return None
            elapsed = time.monotonic() - started
        now = self.clock()
        for name, rep in report.connectors.items():
            h = self.state.health.setdefault(name, ConnectorHealth())
            h.last_run, h.result, h.error = now, rep.status, rep.error
            if rep.status == "ok":
                h.last_ok = now
                h.pulled = h.pulled or name in names
            self.metrics.cycles.labels(name, rep.status).inc()
            self.metrics.duration.labels(name).observe(elapsed)
            self.metrics.conflicts.labels(name).inc(rep.counts.get("conflicts", 0))
            for outcome in ("pulled", "created", "updated", "pushed", "quarantined"):
                self.metrics.records.labels(name, outcome).inc(rep.counts.get(outcome, 0))
            if rep.status not in ("ok", "stopped"):
                self.metrics.errors.labels("cycle").inc()
        log.info(
            "sync finished in %.2f s: %s",
            elapsed,
            "; ".join(
                f"{n} {r.status} {dict(+r.counts) or ''}".rstrip()
                for n, r in report.connectors.items()
            ),
            extra={
                "event": "sync_finished",
                "seconds": round(elapsed, 3),
                "results": {n: r.status for n, r in report.connectors.items()},
            },
        )
        return report

    def request_sync(self, name: str) -> None:
        """Pull ``name`` (and push everywhere) soon: coalesced with other pending requests."""
        with self._pending_lock:
            if self._stopping.is_set():
                return
            self._pending.add(name)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._drain, name="salesbridge-webhook-sync", daemon=True
                )
                self._worker.start()

    def _drain(self) -> None:
        while not self._stopping.is_set():
            with self._pending_lock:
                names = sorted(self._pending)
                self._pending.clear()
                if not names:
                    self._worker = None
                    return
            try:
                self.sync(names, why="webhook")
            except Exception as exc:  # a thread of ours never dies silently
                self.metrics.errors.labels("webhook_sync").inc()
                log.exception("webhook-triggered sync of %s failed", ", ".join(names))
                for name in names:
                    self._alert(name, "job_error", f"webhook sync: {exc!r}")

    def scheduled_sync(self, name: str, full: bool = False) -> None:
        """The ``sync:<name>`` / ``reconcile:<name>`` job. A good cycle clears the connector's
        error alerts (the problem is over); missed runs stay listed until cleared."""
        report = self.sync([name], full=full, why="reconcile" if full else "schedule")
        rep = report.connectors.get(name) if report is not None else None
        if rep is not None and rep.status == "ok":
            with contextlib.suppress(SalesbridgeError):
                for kind in ("job_error", "sync_error"):
                    self.rt.store.clear_alerts(name, kind)

    def sweep_rules(self) -> None:
        from bridge.cli_rules import load_pack
        from bridge.rules.sweep import calendars_from_config, managers_from_config, sweep

        pack = load_pack(self.loaded)
        with self._run_lock:
            report = sweep(
                self.rt.store,
                pack,
                now=self.clock(),
                calendars=calendars_from_config(self.loaded.config),
                managers=managers_from_config(self.loaded.config),
            )
        log.info(
            "rules: %d project(s) checked, %d open violation(s)",
            report.evaluated,
            len(report.failing),
            extra={"event": "rules_swept", "violations": len(report.failing)},
        )

    def send_digest(self, *recipients: str) -> None:
        """Send these recipients' digests from one run: the store is read, and every project
        evaluated, once for all of them."""
        from bridge.digest import send_digests

        send_digests(self.rt.store, self.loaded, only=list(recipients))

    # ------------------------------------------------------------------ scheduler

    def _build_scheduler(self) -> BackgroundScheduler:
        cfg = self.loaded.config
        sched = BackgroundScheduler(
            timezone=cfg.timezone,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(cfg.service.misfire_grace.total_seconds()),
            },
        )
        for name in self.rt.connectors:
            c = self.loaded.connectors[name]
            sched.add_job(
                self.scheduled_sync,
                IntervalTrigger(seconds=c.interval.total_seconds()),
                args=[name],
                id=f"sync:{name}",
                replace_existing=True,
                next_run_time=datetime.now(UTC),
            )
            sched.add_job(
                self.scheduled_sync,
                IntervalTrigger(seconds=c.reconcile_interval.total_seconds()),
                args=[name],
                kwargs={"full": True},
                id=f"reconcile:{name}",
                replace_existing=True,
            )
        sched.add_job(
            self.sweep_rules,
            IntervalTrigger(seconds=cfg.service.rules_interval.total_seconds()),
            id="rules:sweep",
            replace_existing=True,
        )
        # Recipients on the same schedule in the same timezone share one job, so one digest
        # run serves them all (the costly part is per run, not per recipient).
        due: dict[tuple[str, str], list[str]] = {}
        for rname, rec in cfg.recipients.items():
            due.setdefault((rec.schedule, str(rec.timezone or cfg.timezone)), []).append(rname)
        for (schedule, tz), names in due.items():
            sched.add_job(
                self.send_digest,
                CronTrigger.from_crontab(schedule, timezone=tz),
                args=names,
                id=f"digest:{','.join(names)}",
                replace_existing=True,
            )
        sched.add_listener(self._job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        return sched

    def _job_event(self, event: JobExecutionEvent) -> None:
        kind = "job_missed" if event.code == EVENT_JOB_MISSED else "job_error"
        message = f"{event.job_id}: {event.exception!r}" if event.exception else event.job_id
        if kind == "job_missed":
            message = f"{event.job_id}: missed its run at {event.scheduled_run_time}"
        self.metrics.errors.labels(kind).inc()
        log.error("%s %s", kind, message, extra={"event": kind, "job": event.job_id})
        # sync:<connector> and reconcile:<connector> belong to a connector; rules:sweep and
        # digest:<recipient> to the service as a whole.
        job, _, arg = event.job_id.partition(":")
        owner = arg if job in ("sync", "reconcile") else "service"
        with contextlib.suppress(SalesbridgeError):
            if kind == "job_missed" and any(
                a.message.startswith(f"{event.job_id}:")
                for a in self.rt.store.open_alerts(owner, kind=kind)
            ):
                return  # one open "missed" alert per job is enough
        self._alert(owner, kind, message)

    def _alert(self, connector: str, kind: str, message: str) -> None:
        with contextlib.suppress(SalesbridgeError):
            self.rt.store.add_alert(connector, kind, message)

    # ------------------------------------------------------------------ HTTP

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                Route("/metrics", self._metrics),
                Route("/webhooks/{connector}", self._webhook, methods=["POST", "HEAD", "GET"]),
            ]
        )

    def health(self) -> dict[str, Any]:
        """Liveness and, per connector, readiness (its last cycle was ok) and lag."""
        now = self.clock()
        connectors = {
            n: {
                "ready": h.pulled and h.result == "ok",
                "result": h.result,
                "last_run": h.last_run.isoformat() if h.last_run else None,
                "last_ok": h.last_ok.isoformat() if h.last_ok else None,
                "lag_seconds": int((now - h.last_ok).total_seconds()) if h.last_ok else None,
                "error": h.error,
            }
            for n, h in self.state.health.items()
        }
        return {
            "status": "stopping" if self._stopping.is_set() else "ok",
            "ready": bool(connectors) and all(c["ready"] for c in connectors.values()),
            "started_at": self.state.started_at.isoformat(),
            "connectors": connectors,
        }

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse(self.health())

    async def _readyz(self, request: Request) -> Response:
        body = self.health()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def _metrics(self, request: Request) -> Response:
        await run_in_threadpool(self._refresh_gauges)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _refresh_gauges(self) -> None:
        now = self.clock()
        for name, conn in self.rt.connectors.items():
            counter = _request_counter(conn)
            if counter is not None:
                stats = counter.snapshot()
                self.metrics.requests.labels(name).set(stats.total)
                self.metrics.rate_limited.labels(name).set(stats.rate_limited)
            h = self.state.health.get(name)
            if h is not None and h.last_ok is not None:
                self.metrics.lag.labels(name).set((now - h.last_ok).total_seconds())
        store = self.rt.store
        with contextlib.suppress(SalesbridgeError):
            for name in self.rt.connectors:
                self.metrics.quarantined.labels(name).set(len(store.list_quarantine(name)))
            self.metrics.violations.set(len(store.list_violations(True)))

    async def _webhook(self, request: Request) -> Response:
        name = request.path_params["connector"]
        conn = self.rt.connectors.get(name)
        if conn is None:
            return PlainTextResponse("unknown connector", status_code=404)
        if request.method in ("HEAD", "GET"):
            return PlainTextResponse("ok")  # Trello checks the callback URL with HEAD
        if self._stopping.is_set():
            # The tool retries later; whatever it wanted, the next start's poll picks it up.
            return PlainTextResponse("stopping", status_code=503)
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        source = request.client.host if request.client else "?"
        handshake = getattr(conn, "webhook_handshake", None)
        secret = handshake(headers) if handshake is not None else None
        if secret is not None:
            return await run_in_threadpool(self._handshake, name, secret, source)
        url = self._callback_url(request)
        try:
            refs = await run_in_threadpool(self._verify, name, headers, body, url)
        except WebhookRejected as exc:
            self.metrics.webhooks.labels(name, "rejected").inc()
            log.warning(
                "webhook for %s rejected from %s: %s",
                name,
                source,
                exc,
                extra={"event": "webhook_rejected", "connector": name, "source": source},
            )
            return PlainTextResponse("rejected", status_code=401)
        self.metrics.webhooks.labels(name, "accepted").inc()
        log.info(
            "webhook for %s: %d record(s) (%s); syncing",
            name,
            len(refs),
            ", ".join(refs[:5]),
            extra={"event": "webhook_accepted", "connector": name, "refs": refs},
        )
        self.request_sync(name)
        return PlainTextResponse("accepted", status_code=200)

    def _verify(self, name: str, headers: dict[str, str], body: bytes, url: str) -> list[str]:
        conn = self.rt.connectors[name]
        if hasattr(conn, "webhook_secrets"):
            stored = self.rt.store.get_meta(secrets_key(name), []) or []
            conn.webhook_secrets = tuple(str(s) for s in stored)
        refs = conn.verify_webhook(headers, body, url)
        self._check_replay(name, headers, body)
        return refs

    def _handshake(self, name: str, secret: str, source: str) -> Response:
        """Echo an announced handshake's secret and keep it; refuse an unannounced one."""
        store = self.rt.store
        announced = store.get_meta(handshake_key(name))
        fresh = False
        if isinstance(announced, str):
            with contextlib.suppress(ValueError):
                age = (self.clock() - datetime.fromisoformat(announced)).total_seconds()
                fresh = -5 <= age <= HANDSHAKE_WINDOW
        if not fresh:
            self.metrics.webhooks.labels(name, "rejected").inc()
            log.warning(
                "webhook handshake for %s rejected from %s: no `salesbridge webhooks register "
                "%s` is waiting for one",
                name,
                source,
                name,
                extra={"event": "webhook_rejected", "connector": name, "source": source},
            )
            return PlainTextResponse("no registration is waiting", status_code=401)
        known = [s for s in store.get_meta(secrets_key(name), []) or [] if s != secret]
        store.set_meta(secrets_key(name), [*known, secret])
        store.set_meta(handshake_key(name), None)
        self.metrics.webhooks.labels(name, "handshake").inc()
        log.info(
            "webhook handshake for %s accepted",
            name,
            extra={"event": "webhook_handshake", "connector": name},
        )
        return PlainTextResponse("", status_code=200, headers={"X-Hook-Secret": secret})

    def _callback_url(self, request: Request) -> str:
        public = self.loaded.config.service.public_url
        if public:
            return public.rstrip("/") + request.url.path
        return str(request.url)

    def _check_replay(self, name: str, headers: dict[str, str], body: bytes) -> None:
        """A delivery seen before (same connector, same body and signature) is a replay."""
        sig = "".join(
            v
            for k, v in sorted(headers.items())
            if "signature" in k or "webhook" in k or k == "authorization"
        )
        digest = hashlib.sha256(name.encode() + b"\0" + sig.encode() + b"\0" + body).hexdigest()
        now = time.monotonic()
        with self._seen_lock:
            while self._seen and next(iter(self._seen.values())) < now - REPLAY_WINDOW:
                self._seen.popitem(last=False)
            if digest in self._seen:
                raise WebhookRejected("replayed delivery (seen in the last 10 minutes)")
            self._seen[digest] = now

    # ------------------------------------------------------------------ lifecycle

    def begin_stop(self) -> None:
        """No new run starts; a running one finishes its step (signal-handler safe)."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop scheduling; the running step finishes and commits; no new run starts."""
        self._stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        worker = self._worker
        if worker is not None:
            worker.join(STOP_TIMEOUT)
        # The run lock is free once the last step has committed.
        if self._run_lock.acquire(timeout=STOP_TIMEOUT):
            self._run_lock.release()


def _request_counter(conn: object) -> Any:
    """The connector's RequestCounter, wherever that connector keeps it (None if nowhere)."""
    for candidate in (
        getattr(conn, "counter", None),
        getattr(conn, "requests", None),
        getattr(getattr(conn, "_http", None), "counter", None),
    ):
        if hasattr(candidate, "snapshot"):
            return candidate
    return None


@contextlib.contextmanager
def running(service: Service, *, host: str, port: int) -> Iterator[str]:
    """Start the scheduler and the HTTP server; yields the base URL; stops both on exit."""
    from bridge.emulator import EmulatorServer

    server = EmulatorServer(service.app(), host=host, port=port, name="salesbridge")
    server.start()
    service.scheduler.start()
    try:
        yield server.base_url
    finally:
        service.stop()
        server.stop()

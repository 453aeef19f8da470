"""CLI commands around the sync engine: sync, reconcile, status, conflicts, quarantine, history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bridge.cli import EXIT_FAIL, EXIT_INPUT, ConfigOpt, JsonOpt, app, console, load, print_json
from bridge.errors import UserError
from bridge.sync import SyncReport

conflicts_app = typer.Typer(help="List and settle sync conflicts.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Records that could not be synced.", no_args_is_help=True)
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(quarantine_app, name="quarantine")

ConnectorOpt = Annotated[
    list[str] | None, typer.Option("--connector", help="Only this connector (repeatable).")
]


def _run(
    config: Any,
    connector: list[str] | None,
    *,
    dry_run: bool,
    force: bool,
    full: bool,
    as_json: bool,
) -> SyncReport:
    from bridge.runtime import open_runtime

    loaded = load(config)
    with open_runtime(loaded, only=connector or None) as rt:
        if as_json or dry_run:
            return rt.engine.run(dry_run=dry_run, force=force, full=full)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} records"),
            TimeElapsedColumn(),
            console=console(stderr=True),
            transient=True,
        ) as bar:
            tasks = {n: bar.add_task(f"{n}", total=None) for n in rt.connectors}

            def progress(name: str, phase: str, n: int) -> None:
                bar.update(tasks[name], advance=n, description=f"{name}: {phase}")

            return rt.engine.run(dry_run=dry_run, force=force, full=full, progress=progress)


def _print_report(report: SyncReport, as_json: bool) -> None:
    rows = report.plan.rows()
    if as_json:
        print_json(
            {
                "dry_run": report.dry_run,
                "connectors": {
                    n: {"status": r.status, "error": r.error, "counts": dict(r.counts)}
                    for n, r in report.connectors.items()
                },
                "writes": rows if report.dry_run else report.plan.row_count,
            }
        )
        return
    out = console()
    if report.dry_run:
        table = Table(
            "target",
            "record",
            "project",
            "field",
            "old",
            "new",
            "reason",
            title=f"Planned writes ({len(rows)})",
        )
        for r in rows:
            table.add_row(
                r["target"],
                str(r["ref"] or ""),
                str(r["project"] or ""),
                str(r["field"] or r["action"]),
                _cell(r["old"]),
                _cell(r["new"]),
                r["reason"],
            )
        out.print(table if rows else "No changes.")
    summary = Table(
        "connector",
        "result",
        "pulled",
        "created",
        "updated",
        "conflicts",
        "quarantined",
        "pushed",
        "created in tool",
        title="Sync",
    )
    for n, rep in report.connectors.items():
        c = rep.counts
        result = "[green]ok[/green]" if rep.status == "ok" else f"[red]{rep.status}[/red]"
        summary.add_row(
            n,
            result,
            *(
                str(c.get(k, 0))
                for k in (
                    "pulled",
                    "created",
                    "updated",
                    "conflicts",
                    "quarantined",
                    "pushed",
                    "push_created",
                )
            ),
        )
    out.print(summary)
    for n, rep in report.connectors.items():
        if rep.error:
            out.print(f"[red]{n}:[/red] {rep.error}", markup=True)


def _cell(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


@app.command()
def sync(
    config: ConfigOpt = None,
    connector: ConnectorOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help=("Print every write it would make; exit 2 if there are any, 0 if none."),
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help=("Go on although many linked records vanished (the breaker).")
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Pull, merge and push once for every enabled connector."""
    report = _run(config, connector, dry_run=dry_run, force=force, full=False, as_json=as_json)
    _print_report(report, as_json)
    if dry_run and report.plan.rows():
        raise typer.Exit(EXIT_INPUT)
    if not report.ok:
        raise typer.Exit(EXIT_FAIL)


@app.command()
def reconcile(
    config: ConfigOpt = None,
    connector: ConnectorOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Override the breaker.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Full census of each tool: repair records an incremental pull missed and dead links."""
    report = _run(config, connector, dry_run=dry_run, force=force, full=True, as_json=as_json)
    _print_report(report, as_json)
    if not report.ok:
        raise typer.Exit(EXIT_FAIL)


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Per connector: last cycle, result, lag, pending conflicts, quarantined records."""
    from bridge.cli import open_store

    loaded = load(config)
    now = datetime.now(UTC)
    with open_store(loaded) as store:
        runs = store.last_runs()
        rows = []
        for name in loaded.connectors:
            run = runs.get(name)
            rows.append(
                {
                    "connector": name,
                    "last_run": run.started_at.isoformat() if run else None,
                    "result": run.status if run else "never",
                    "lag_seconds": int((now - run.started_at).total_seconds()) if run else None,
                    "error": run.error if run else None,
                    "linked": store.count_links(name),
                    "conflicts": len(store.list_conflicts(True, connector=name)),
                    "quarantined": len(store.list_quarantine(name)),
                    "alerts": [a.message for a in store.open_alerts(name)],
                }
            )
        # Alerts of the service's own jobs (rule sweep, digests) are kept under "service".
        service_alerts = [a.message for a in store.open_alerts("service")]
    if as_json:
        print_json(rows)
        return
    table = Table(
        "connector",
        "last run",
        "result",
        "lag",
        "linked",
        "conflicts",
        "quarantined",
        title="Status",
    )
    for r in rows:
        lag = "-" if r["lag_seconds"] is None else f"{r['lag_seconds'] // 60} min"
        table.add_row(
            r["connector"],
            r["last_run"] or "-",
            r["result"],
            lag,
            str(r["linked"]),
            str(r["conflicts"]),
            str(r["quarantined"]),
        )
    out = console()
    out.print(table)
    for r in rows:
        for msg in r["alerts"]:
            out.print(f"[red]alert[/red] {r['connector']}: {msg}")
    for msg in service_alerts:
        out.print(f"[red]alert[/red] service: {msg}")


@conflicts_app.command("list")
def conflicts_list(
    config: ConfigOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved ones.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Conflicts: both sides changed a field differently."""
    from bridge.cli import open_store

    with open_store(load(config)) as store:
        items = store.list_conflicts(not all_)
    rows = [
        {
            "id": c.id,
            "project": c.project_id,
            "connector": c.connector,
            "field": c.field,
            "hub": c.hub_value,
            "remote": c.remote_value,
            "base": c.base_value,
            "resolution": c.resolution,
            "policy": c.policy,
            "detected_at": c.detected_at.isoformat(),
        }
        for c in items
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(
        "id", "project", "connector", "field", "hub", "remote", "resolution", title="Conflicts"
    )
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["project"],
            r["connector"],
            r["field"],
            _cell(r["hub"]),
            _cell(r["remote"]),
            f"{r['resolution']} ({r['policy']})",
        )
    console().print(table if rows else "No conflicts.")


@conflicts_app.command("resolve")
def conflicts_resolve(
    conflict_id: Annotated[int, typer.Argument(help="Conflict id from `conflicts list`.")],
    take: Annotated[str, typer.Option("--take", help="hub, remote, or a JSON value.")],
    config: ConfigOpt = None,
) -> None:
    """Settle a conflict; the chosen value is pushed to every tool on the next sync."""
    from bridge.runtime import open_runtime

    side, value = (take, None) if take in ("hub", "remote") else ("value", _json_value(take))
    with open_runtime(load(config)) as rt:
        try:
            rt.engine.resolve_conflict(conflict_id, side, value)
        except (KeyError, ValueError) as exc:
            raise UserError(f"conflict {conflict_id}: {exc}") from None
    console().print(f"conflict {conflict_id} resolved: {side}")


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@quarantine_app.command("list")
def quarantine_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Records skipped because they could not be read or mapped, with the reason."""
    from bridge.cli import open_store

    with open_store(load(config)) as store:
        items = store.list_quarantine()
    rows = [
        {
            "id": q.id,
            "connector": q.connector,
            "ref": q.ref,
            "reason": q.reason,
            "attempts": q.attempts,
            "last_seen": q.last_seen.isoformat(),
        }
        for q in items
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "connector", "record", "reason", "attempts", title="Quarantine")
    for r in rows:
        table.add_row(str(r["id"]), r["connector"], r["ref"], r["reason"], str(r["attempts"]))
    console().print(table if rows else "Nothing quarantined.")


@quarantine_app.command("retry")
def quarantine_retry(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Read every quarantined record again (after fixing the record or the mapping)."""
    report = _run(config, None, dry_run=False, force=False, full=True, as_json=as_json)
    _print_report(report, as_json)


@app.command()
def history(
    project: Annotated[str, typer.Argument(help="Canonical project id.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A project's event log: every change, when, by whom, from where."""
    from bridge.cli import open_store

    with open_store(load(config)) as store:
        if store.get_project(project) is None:
            raise UserError(f"no project {project!r}; `salesbridge status` lists connectors")
        events = store.events_for(project)
    rows = [
        {
            "at": e.at.isoformat(),
            "source": e.source,
            "actor": e.actor,
            "field": e.field,
            "old": e.old,
            "new": e.new,
            "meaningful": e.meaningful,
        }
        for e in events
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("at", "source", "actor", "field", "old", "new", title=f"History of {project}")
    for r in rows:
        table.add_row(
            r["at"], r["source"], r["actor"] or "", r["field"], _cell(r["old"]), _cell(r["new"])
        )
    console().print(table)

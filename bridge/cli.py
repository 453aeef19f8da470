"""The ``salesbridge`` command line.

Exit codes are the same everywhere: 0 ok, 1 failure, 2 bad input or config (and, for
``sync --dry-run``, "there are changes"). Every read command takes ``--json`` for automation.
A UserError is printed as advice (file, key, fix) without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bridge import __version__
from bridge.config import LoadedConfig, dump_problems, find_config, load_config
from bridge.errors import BreakerTripped, Problem, SalesbridgeError, UserError

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="SALESBRIDGE_CONFIG",
        help="Config file [default: ./salesbridge.toml if present, else built-in defaults].",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for automation.")]

app = typer.Typer(
    name="salesbridge",
    help=(
        "Keep Jira, Trello, Asana and CRM records in sync with one sales-project tracking "
        "plan, check every project against the plan's rules, and send managers digests."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Validate configuration files.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the state store (SQLite or PostgreSQL).", no_args_is_help=True)
mappings_app = typer.Typer(help="Check and preview field mappings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(mappings_app, name="mappings")


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def load(config: Path | None) -> LoadedConfig:
    return load_config(find_config(config))


@contextmanager
def open_store(loaded: LoadedConfig) -> Iterator[Any]:
    from bridge.store import Store

    store = Store.open(loaded.store_url())
    try:
        yield store
    finally:
        store.close()


@app.callback()
def _root(
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "warning",
    log_format: Annotated[
        str, typer.Option("--log-format", help="human or json (one object per line).")
    ] = "human",
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        typer.echo(f"salesbridge {__version__}")
        raise typer.Exit(0)
    configure_logging(log_level, log_format)


def configure_logging(level: str, fmt: str = "human") -> None:
    """Logs on stderr with secrets redacted from every record (see bridge/logs.py)."""
    from bridge.logs import configure_logging as configure

    configure(level, "json" if fmt == "json" else "human")


# --------------------------------------------------------------------------- schema


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to a file.")] = None,
) -> None:
    """Print the JSON Schema of the canonical sales project."""
    from bridge.model import json_schema

    text = json.dumps(json_schema(), ensure_ascii=False, indent=2) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        console(stderr=True).print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command("connectors")
def connectors_cmd(as_json: JsonOpt = False) -> None:
    """List the installed connector kinds."""
    from bridge.registry import connector_class, connector_kinds

    rows = []
    for kind in connector_kinds():
        cls = connector_class(kind)
        rows.append({"kind": kind, "class": f"{cls.__module__}.{cls.__qualname__}"})
    if as_json:
        print_json(rows)
        return
    table = Table("kind", "implementation", title="Installed connectors")
    for r in rows:
        table.add_row(r["kind"], r["class"])
    console().print(table)


# --------------------------------------------------------------------------- init


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path(),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files that already exist.")
    ] = False,
) -> None:
    """Write a starting workspace: salesbridge.toml (the commented example config), the default
    mapping of every connector kind under mappings/, and the default rule pack under rules/."""
    import shutil

    from bridge.shipped import default_rules, example_config, mappings_dir

    plan = [(example_config(), folder / "salesbridge.toml")]
    plan += [(m, folder / "mappings" / m.name) for m in sorted(mappings_dir().glob("*.toml"))]
    plan.append((default_rules(), folder / "rules" / "default.toml"))
    existing = [dst for _, dst in plan if dst.exists()]
    if existing and not force:
        raise UserError(
            Problem(
                str(dst),
                "",
                "already exists, so nothing was written; edit it, or run "
                "`salesbridge init --force` to overwrite it",
            )
            for dst in existing
        )
    out = console()
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        out.print(f"wrote {dst}")
    out.print(
        "Next: set the connectors in salesbridge.toml (secrets as env:NAME), then "
        "`salesbridge config check --online` and `salesbridge sync --dry-run`."
    )


# --------------------------------------------------------------------------- config


@config_app.command("check")
def config_check(
    config: ConfigOpt = None,
    online: Annotated[
        bool, typer.Option("--online", help="Also log in to each connector (check()).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate a config file and the mapping files it names; report every problem at once."""
    from bridge.mapping import load_mapping
    from bridge.runtime import build_connector

    path = find_config(config)
    loaded = load_config(path)
    problems = []
    for name in loaded.connectors:
        try:
            load_mapping(loaded.mapping_path(name), lifecycle_keys=loaded.config.lifecycle.keys)
        except UserError as exc:
            problems += exc.problems
    if problems:
        raise UserError(problems)
    results: list[dict[str, str]] = []
    failed = False
    if online:
        for name in loaded.connectors:
            try:
                with build_connector(loaded, name) as conn:
                    results.append({"connector": name, "ok": "yes", "detail": conn.check()})
            except SalesbridgeError as exc:
                failed = True
                results.append({"connector": name, "ok": "no", "detail": str(exc)})
    if as_json:
        print_json({"file": str(path or "(defaults)"), "ok": not failed, "connectors": results})
    else:
        out = console()
        out.print(
            f"[green]OK[/green] {path or '(built-in defaults)'}: "
            f"{len(loaded.connectors)} connector(s), "
            f"{len(loaded.config.recipients)} recipient(s)"
        )
        for r in results:
            mark = "[green]ok[/green]" if r["ok"] == "yes" else "[red]FAILED[/red]"
            out.print(f"  {r['connector']}: {mark} {r['detail']}")
    if failed:
        raise typer.Exit(EXIT_FAIL)


# --------------------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply pending migrations to the store (also done automatically on start)."""
    from bridge.store import upgrade

    loaded = load(config)
    rev = upgrade(loaded.store_url())
    console().print(f"store is at revision {rev}")


@db_app.command("current")
def db_current(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the store's migration revision."""
    from bridge.store import current_revision

    loaded = load(config)
    rev = current_revision(loaded.store_url())
    if as_json:
        print_json({"revision": rev})
    else:
        console().print(f"revision: {rev or '(empty database)'}")


# --------------------------------------------------------------------------- mappings


@mappings_app.command("check")
def mappings_check(
    config: ConfigOpt = None,
    connector: Annotated[
        str | None, typer.Option("--connector", help="Only this connector.")
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not ask the tools for their live schema.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate mapping files against the canonical model and each tool's live schema."""
    from bridge.mapping import load_mapping
    from bridge.runtime import build_connector

    loaded = load(config)
    names = [connector] if connector else list(loaded.connectors)
    problems = []
    checked = []
    for name in names:
        with build_connector(loaded, name) as conn:
            schema_ = None if offline else conn.discover()
            try:
                spec = load_mapping(
                    loaded.mapping_path(name),
                    schema_,
                    lifecycle_keys=loaded.config.lifecycle.keys,
                    connector=conn.kind,
                )
                checked.append(
                    {
                        "connector": name,
                        "file": str(loaded.mapping_path(name)),
                        "fields": len(spec.rules),
                        "live_schema": not offline,
                    }
                )
            except UserError as exc:
                problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise UserError(problems)
    if as_json:
        print_json(checked)
        return
    for row in checked:
        console().print(
            f"[green]OK[/green] {row['connector']}: {row['file']} ({row['fields']} fields)"
        )


@mappings_app.command("preview")
def mappings_preview(
    connector: Annotated[str, typer.Argument(help="Configured connector name.")],
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Records to show.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Show remote records and the canonical projects they map to, side by side."""
    from datetime import UTC, datetime

    from bridge.mapping import load_mapping
    from bridge.runtime import build_connector
    from connectors.base import Cursor

    loaded = load(config)
    rows: list[dict[str, Any]] = []
    with build_connector(loaded, connector) as conn:
        spec = load_mapping(
            loaded.mapping_path(connector),
            conn.discover(),
            lifecycle_keys=loaded.config.lifecycle.keys,
        )
        for page in conn.pull(Cursor(), signpost=datetime.now(UTC), full=True):
            for rec in page.records:
                try:
                    mapped: Any = spec.to_canonical(rec)
                    error = None
                except SalesbridgeError as exc:
                    mapped, error = None, str(exc)
                rows.append(
                    {
                        "ref": rec.ref,
                        "remote": dict(rec.fields),
                        "canonical": mapped,
                        "error": error,
                    }
                )
                if len(rows) >= limit:
                    break
            if len(rows) >= limit:
                break
    if as_json:
        print_json(rows)
        return
    out = console()
    for row in rows:
        table = Table(title=f"{connector} {row['ref']}", show_lines=False)
        table.add_column("remote field")
        table.add_column("remote value", overflow="fold")
        table.add_column("canonical field")
        table.add_column("canonical value", overflow="fold")
        remote = list(row["remote"].items())
        canon = list((row["canonical"] or {}).items())
        for i in range(max(len(remote), len(canon))):
            rk, rv = remote[i] if i < len(remote) else ("", "")
            ck, cv = canon[i] if i < len(canon) else ("", "")
            table.add_row(str(rk), _short(rv), str(ck), _short(cv))
        out.print(table)
        if row["error"]:
            out.print(f"[red]would be quarantined:[/red] {row['error']}")


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- entry point


def _report_user_error(exc: UserError) -> None:
    # Plain lines, never wrapped: people grep and copy them.
    err = console(stderr=True)
    err.print(f"[bold red]{len(exc.problems)} problem(s) to fix:[/bold red]")
    for p in exc.problems:
        sys.stderr.write(f"  {p}\n")
    if os.environ.get("SALESBRIDGE_ERRORS_JSON") == "1":
        print_json({"problems": dump_problems(exc.problems)})


def run_guarded(func: Callable[[], Any]) -> int:
    """Run the CLI, turning our errors into messages and exit codes instead of tracebacks."""
    try:
        func()
    except UserError as exc:
        _report_user_error(exc)
        return EXIT_INPUT
    except BreakerTripped as exc:
        console(stderr=True).print(f"[bold red]breaker tripped:[/bold red] {exc}", markup=True)
        return EXIT_FAIL
    except SalesbridgeError as exc:
        from bridge.secrets import redact

        console(stderr=True).print(f"[bold red]error:[/bold red] {redact(str(exc))}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return EXIT_OK


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_guarded(lambda: app(prog_name="salesbridge")))


# Commands defined in other modules register themselves on `app` when imported.
from bridge import (  # noqa: E402, F401
    cli_digest,
    cli_emulate,
    cli_rules,
    cli_run,
    cli_sync,
    cli_webhooks,
    demo,
)

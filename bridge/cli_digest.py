"""CLI commands for managers' output: ``salesbridge digest preview|send`` and ``export``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import typer

from bridge.cli import EXIT_FAIL, ConfigOpt, JsonOpt, app, console, load, open_store, print_json
from bridge.errors import UserError

digest_app = typer.Typer(
    help="Compliance digests for managers: preview and send.", no_args_is_help=True
)
app.add_typer(digest_app, name="digest")


def _lang(lang: str | None) -> str | None:
    if lang is not None and lang not in ("en", "zh-CN"):
        raise UserError(f"--lang must be en or zh-CN, not {lang!r}")
    return lang


@digest_app.command("preview")
def digest_preview(
    recipient: Annotated[
        str, typer.Option("--recipient", "-r", help="[recipients.<key>] key or name.")
    ],
    config: ConfigOpt = None,
    lang: Annotated[
        str | None,
        typer.Option("--lang", help="en or zh-CN [default: the recipient's language]."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the HTML e-mail to this file."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="What to print without --out: text or markdown.")
    ] = "text",
) -> None:
    """Show a recipient's digest as it would be sent now (nothing is sent or archived)."""
    from bridge.digest import render_digest

    if fmt not in ("text", "markdown"):
        raise UserError(f"--format must be text or markdown, not {fmt!r}")
    loaded = load(config)
    with open_store(loaded) as store:
        html, text, markdown = render_digest(
            store, loaded, recipient, _lang(lang), datetime.now(UTC)
        )
    if out is not None:
        out.write_text(html, encoding="utf-8")
        console(stderr=True).print(f"wrote {out}")
        return
    typer.echo(markdown if fmt == "markdown" else text, nl=False)


@digest_app.command("send")
def digest_send(
    config: ConfigOpt = None,
    recipient: Annotated[
        list[str] | None,
        typer.Option("--recipient", "-r", help="Only this recipient (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build and list the digests; send nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send the digests now (every recipient, or those named). Exit 1 if one could not be
    delivered; the others are sent anyway."""
    from bridge.digest import send_digests

    loaded = load(config)
    with open_store(loaded) as store:
        outcomes = send_digests(store, loaded, only=recipient or None, dry_run=dry_run)
    if as_json:
        print_json([o.as_json() for o in outcomes])
    else:
        out = console()
        for o in outcomes:
            where = ", ".join(o.channels) or "no channel"
            line = f"{o.recipient}: {o.status} ({where}) {o.subject}"
            out.print(line, markup=False)
            for d in o.deliveries:
                if not d.ok:
                    out.print(f"  {d.channel} failed after {d.attempts} attempt(s): {d.error}")
            if o.error:
                out.print(f"  {o.error}", markup=False)
    if any(o.status in ("failed", "partial", "error") for o in outcomes):
        raise typer.Exit(EXIT_FAIL)


@app.command("export")
def export_cmd(
    fmt: Annotated[str, typer.Option("--format", "-f", help="xlsx or csv.")] = "xlsx",
    config: ConfigOpt = None,
    team: Annotated[
        str | None, typer.Option("--team", help="Only this team (and teams nested in it).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output file [default: projects.xlsx / projects.csv]."),
    ] = None,
    lang: Annotated[
        str | None, typer.Option("--lang", help="Header language: en or zh-CN.")
    ] = None,
) -> None:
    """Write the standard project tracking table (with open violations) as xlsx or csv."""
    from bridge.digest import load_pack
    from bridge.export import export

    if fmt not in ("xlsx", "csv"):
        raise UserError(f"--format must be xlsx or csv, not {fmt!r}")
    kind: Literal["xlsx", "csv"] = "xlsx" if fmt == "xlsx" else "csv"
    target = out or Path(f"projects.{kind}")
    loaded = load(config)
    with open_store(loaded) as store:
        n = export(
            store,
            loaded,
            fmt=kind,
            out=target,
            team=team,
            lang=_lang(lang),
            pack=load_pack(loaded),
        )
    console(stderr=True).print(f"wrote {n} project(s) to {target}")

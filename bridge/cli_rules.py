"""CLI commands around the rule engine: ``salesbridge rules check|explain|test``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bridge.cli import EXIT_FAIL, ConfigOpt, JsonOpt, app, console, load, open_store, print_json
from bridge.config import LoadedConfig
from bridge.errors import UserError

rules_app = typer.Typer(
    help="Check projects against the tracking plan's rules.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")

LangOpt = Annotated[
    str | None,
    typer.Option("--lang", help="en or zh-CN [default: the config's language]."),
]


def load_pack(loaded: LoadedConfig) -> Any:
    """The configured rule pack (``[rules] files``, relative to the config file), or the
    default pack when the list is empty."""
    from bridge.rules import load_rules

    files = [loaded.resolve(p) for p in loaded.config.rules.files] or None
    return load_rules(files, lifecycle=loaded.config.lifecycle)


def _lang(loaded: LoadedConfig, lang: str | None) -> str:
    value = lang or loaded.config.language
    if value not in ("en", "zh-CN"):
        raise UserError(f"--lang must be en or zh-CN, not {value!r}")
    return value


@rules_app.command("check")
def rules_check(
    config: ConfigOpt = None,
    project: Annotated[
        list[str] | None, typer.Option("--project", help="Only this project id (repeatable).")
    ] = None,
    lang: LangOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate the rules over the store now and record violations (opened, resolved,
    escalated). Exit 1 if a rule could not be evaluated on some project."""
    from bridge.rules.sweep import calendars_from_config, managers_from_config, sweep

    loaded = load(config)
    language = _lang(loaded, lang)
    pack = load_pack(loaded)
    with open_store(loaded) as store:
        report = sweep(
            store,
            pack,
            now=datetime.now(UTC),
            calendars=calendars_from_config(loaded.config),
            managers=managers_from_config(loaded.config),
            project_ids=project or None,
            annotate_lang=loaded.config.language,
        )
    if as_json:
        print_json(report.as_json(language))
    else:
        out = console()
        out.print(
            f"{report.evaluated} project(s) checked, {report.tracked} tracked: "
            f"{len(report.failing)} open violation(s), {len(report.opened)} new, "
            f"{len(report.resolved)} resolved, {len(report.escalated)} escalated"
        )
        if report.failing:
            table = Table("project", "rule", "severity", "owner", "since", "why", title="Open")
            for f in report.failing:
                v = f.violation
                table.add_row(
                    v.project_id,
                    v.rule,
                    v.severity,
                    v.owner or "",
                    v.opened_at.date().isoformat(),
                    f.describe(language),
                )
            out.print(table)
        for esc in report.escalated:
            who = ", ".join(esc.managers) or "no manager configured for the team"
            out.print(f"escalated {esc.violation.rule} on {esc.violation.project_id} to {who}")
    if report.errors:
        err = console(stderr=True)
        for e in report.errors:
            err.print(
                f"[red]rule error[/red] {e.project_id} {e.rule or '(evaluation)'}: {e.message}"
            )
        raise typer.Exit(EXIT_FAIL)


@rules_app.command("explain")
def rules_explain(
    project: Annotated[str, typer.Argument(help="Project id (sb-...) or project code.")],
    config: ConfigOpt = None,
    lang: LangOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show every rule on one project: pass, fail, not applicable or error, and why."""
    from bridge.rules.sweep import calendars_from_config

    loaded = load(config)
    language = _lang(loaded, lang)
    pack = load_pack(loaded)
    with open_store(loaded) as store:
        data = store.get_project(project, include_tombstoned=False)
        if data is None:
            data = next((p for p in store.list_projects() if p.get("code") == project), None)
        if data is None:
            raise UserError(
                f"no project {project!r} in the store; give its id (sb-...) or its code"
            )
        events = store.events_for(str(data["id"]))
    cal = calendars_from_config(loaded.config)(data.get("team"))
    ev = pack.evaluate(data, events, datetime.now(UTC), cal, explain=True)
    if as_json:
        print_json(
            {
                "project": ev.project_id,
                "now": ev.now.isoformat(),
                "admission": {
                    "tracked": ev.admission.tracked,
                    "rule_version": ev.admission.rule_version,
                    "rule": ev.admission.rule,
                    "reason": ev.admission.reason_in(language),
                    "error": ev.admission.error,
                },
                "rules": [
                    {
                        "rule": r.rule.id,
                        "title": r.rule.title_in(language),
                        "outcome": r.outcome,
                        "severity": r.rule.severity,
                        "why": r.why,
                        "message": r.message(language) if r.outcome == "fail" else None,
                        "evidence": r.evidence,
                        "annotation": r.annotation(language),
                    }
                    for r in ev.results
                ],
            }
        )
        return
    out = console()
    name = data.get("name") or ev.project_id
    adm = ev.admission
    state = "tracked" if adm.tracked else "not tracked"
    out.print(f"[bold]{name}[/bold] ({ev.project_id}), stage {data.get('stage')}")
    out.print(
        f"admission {adm.rule_version}: {state} - {adm.reason_in(language)}"
        + (f" [red]({adm.error})[/red]" if adm.error else "")
    )
    table = Table("rule", "result", "why", "evidence", title=f"Rules ({', '.join(pack.sources)})")
    marks = {
        "pass": "[green]pass[/green]",
        "fail": "[red]FAIL[/red]",
        "skip": "[dim]n/a[/dim]",
        "error": "[magenta]ERROR[/magenta]",
    }
    for r in ev.results:
        why = r.message(language) if r.outcome == "fail" else r.why
        evidence = ", ".join(f"{k}={v}" for k, v in r.evidence.items())
        table.add_row(f"{r.rule.id}\n{r.rule.title_in(language)}", marks[r.outcome], why, evidence)
    out.print(table)


@rules_app.command("test")
def rules_test(
    file: Annotated[Path, typer.Argument(help="Test file (TOML or JSON) with fixture cases.")],
    rules: Annotated[
        list[Path] | None,
        typer.Option("--rules", help="Rule file to test instead of the file's own (repeatable)."),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run fixture projects through a rule file and compare with the expected outcomes.
    Exit 1 if any case does not match."""
    from bridge.rules.fixtures import run_fixtures

    loaded = load(config)
    report = run_fixtures(file, lifecycle=loaded.config.lifecycle, rules=rules or None)
    if as_json:
        print_json(report.as_json())
    else:
        out = console()
        for case in report.cases:
            mark = "[green]ok[/green]  " if case.ok else "[red]FAIL[/red]"
            out.print(f"{mark} {case.name}")
            for m in case.mismatches:
                out.print(f"       {m}", markup=False)
        passed = sum(c.ok for c in report.cases)
        out.print(f"{passed} passed, {len(report.cases) - passed} failed")
    if not report.ok:
        raise typer.Exit(EXIT_FAIL)

"""Loading and validating the salesbridge config file (TOML).

Every problem in a file is collected and reported at once, each as
``file: [section] key <- what is wrong, and the fix``; :class:`bridge.errors.UserError`
carries them to the CLI, which prints them without a traceback and exits with code 2.

Connector tables are told apart by ``kind``; each kind's settings are validated by the
connector's own pydantic model (found through the entry-point registry), so a third-party
connector brings its own settings without touching this module.
"""

from __future__ import annotations

import difflib
import tomllib
import zoneinfo
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.errors import Problem, UserError
from bridge.model import Lifecycle
from bridge.registry import connector_class, connector_kinds
from bridge.secrets import Secret, SecretRef
from connectors.base import ConnectorConfig, parse_duration

DEFAULT_CONFIG_NAME = "salesbridge.toml"
DEFAULT_STORE_URL = "sqlite:///salesbridge.db"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_timezone(v: str) -> str:
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {v!r}; use an IANA name such as Asia/Shanghai or Europe/Berlin"
        ) from None
    return v


class StoreConfig(_Section):
    url: str | Secret = Field(
        DEFAULT_STORE_URL,
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _no_password(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.startswith("env:"):
            try:
                parts = urlsplit(v)
            except ValueError:
                raise ValueError("is not a database URL") from None
            if parts.password:
                raise ValueError(
                    "the URL holds a password; put the whole URL in an environment variable "
                    'and write url = "env:SALESBRIDGE_DB_URL"'
                )
            if not parts.scheme.startswith(("sqlite", "postgresql")):
                raise ValueError(
                    "only sqlite:///file.db and postgresql+psycopg://user@host/db are supported"
                )
        return v

    def resolved_url(self) -> str:
        return self.url.reveal() if isinstance(self.url, SecretRef) else self.url


class SyncConfig(_Section):
    conflict_policy: Literal["newest_wins", "review"] = Field(
        "newest_wins", description="how a conflict no field owner decides is settled"
    )
    breaker_threshold: float = Field(
        0.2, gt=0, le=1, description="share of linked records vanishing in one pull that stops it"
    )
    overlap_seconds: int = Field(120, ge=0, description="cursor overlap window for coarse filters")
    max_workers: int = Field(4, ge=1, le=32, description="connectors pulled concurrently")


class TeamConfig(_Section):
    label: str | None = None
    label_zh: str | None = None
    parent: str | None = Field(None, description="enclosing team; digests roll up")
    timezone: str | None = Field(None, description="defaults to the top-level timezone")
    holidays: list[date] = Field(default_factory=list, description="non-business days")
    members: list[str] = Field(default_factory=list, description="owner e-mails in this team")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return v if v is None else _check_timezone(v)


class RecipientConfig(_Section):
    name: str
    email: str | None = None
    language: Literal["en", "zh-CN"] = "en"
    teams: list[str] = Field(min_length=1, description="teams whose projects this person sees")
    role: str = "manager"
    mask_amounts: bool = False
    schedule: str = Field("0 8 * * mon", description="cron: minute hour day month weekday")
    timezone: str | None = None
    channels: list[Secret] = Field(
        default_factory=list, description="apprise URLs of chat webhooks, as env: references"
    )
    skip_empty: bool = True

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return v if v is None else _check_timezone(v)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and "@" not in v:
            raise ValueError("is not an e-mail address")
        return v


class SmtpConfig(_Section):
    host: str
    port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    sender: str = Field(description="From: address")


class ServiceConfig(_Section):
    """`salesbridge run`: where the webhook receiver, health and metrics listen."""

    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 to accept from outside")
    port: int = Field(8787, ge=0, le=65535)
    public_url: str | None = Field(
        None, description="URL the tools reach the receiver at (for webhook registration)"
    )
    rules_interval: timedelta = Field(timedelta(minutes=15), description="rule sweep interval")
    misfire_grace: timedelta = Field(timedelta(minutes=2), description="late job still runs")

    @field_validator("rules_interval", "misfire_grace", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)


class RulesConfig(_Section):
    files: list[Path] = Field(default_factory=list, description="rule files; empty = default pack")


class Config(_Section):
    """The whole config file, after validation."""

    timezone: str = "UTC"
    language: Literal["en", "zh-CN"] = "en"
    store: StoreConfig = Field(default_factory=StoreConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    recipients: dict[str, RecipientConfig] = Field(default_factory=dict)
    smtp: SmtpConfig | None = None
    rules: RulesConfig = Field(default_factory=RulesConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    # Validated separately, per kind; see load_config.
    connectors: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)


class LoadedConfig:
    """A validated config plus what was derived from it (paths, typed connector settings)."""

    def __init__(self, config: Config, path: Path | None, connectors: dict[str, ConnectorConfig]):
        self.config = config
        self.path = path
        self.connectors = connectors

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, p: Path) -> Path:
        """A path from the file, relative to the file's own folder."""
        return p if p.is_absolute() else (self.base_dir / p)

    def mapping_path(self, name: str) -> Path:
        """The connector's ``mapping``; unset, ``mappings/<kind>.toml`` beside the config file,
        or the shipped default mapping of the kind when there is no such file."""
        cfg = self.connectors[name]
        if cfg.mapping is not None:
            return self.resolve(cfg.mapping)
        local = self.resolve(Path("mappings") / f"{cfg.kind}.toml")
        if local.is_file():
            return local
        from bridge.shipped import default_mapping

        shipped = default_mapping(cfg.kind)
        return shipped if shipped.is_file() else local

    def store_url(self) -> str:
        """The store URL; a relative SQLite path is taken from the config file's folder."""
        url = self.config.store.resolved_url()
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            p = Path(url[len(prefix) :])
            if not p.is_absolute():
                return prefix + str(self.resolve(p))
        return url


# --------------------------------------------------------------------------- error rendering


def _key_of(loc: Sequence[int | str]) -> str:
    """Render a validation location the way the file spells it.

    ('connectors', 'jira', 'token') -> '[connectors.jira] token';
    ('lifecycle', 'stages', 2, 'key') -> '[[lifecycle.stages]] (item 3) key';
    ('recipients', 'li', 'channels', 0) -> '[recipients.li] channels (item 1)'.
    """
    parts = [p for p in loc if not str(p).startswith("function-")]
    if not parts:
        return "(top level)"
    # The key is the last string part; indices after it belong to the key.
    key_at = max(i for i, p in enumerate(parts) if isinstance(p, str))
    key = str(parts[key_at]) + "".join(f" (item {int(p) + 1})" for p in parts[key_at + 1 :])
    section = parts[:key_at]
    if not section:
        return key
    names = [str(p) for p in section if isinstance(p, str)]
    items = [int(p) for p in section if isinstance(p, int)]
    if items:
        return f"[[{'.'.join(names)}]] (item {items[-1] + 1}) {key}"
    return f"[{'.'.join(names)}] {key}"


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys a model accepts at ``loc`` (for 'did you mean' hints); [] if unknown."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", None)
        if not fields or part not in fields:
            # dict[str, Model]: skip the user's key
            args = getattr(cur, "__args__", None)
            cur = args[-1] if args else None
            if cur is None:
                return []
            continue
        ann = fields[part].annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cur = cand
                break
            inner = getattr(cand, "__args__", None)
            if inner and isinstance(inner[-1], type) and issubclass(inner[-1], BaseModel):
                cur = inner[-1]
                break
        else:
            return []
    return list(getattr(cur, "model_fields", {}))


def _message(err: Any, model: type[BaseModel], value_hidden: bool) -> str:
    kind = err["type"]
    loc = err["loc"]
    msg: str = err["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        return f"unknown key; {hint}" if allowed else "unknown key; remove it"
    if kind == "missing":
        return "required key is missing; add it"
    if kind == "value_error":
        # Our own validators already phrase the fix.
        return msg.removeprefix("Value error, ")
    if not value_hidden and "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg + "; fix the value"


_SECRET_KEYS = frozenset({"token", "password", "secret", "api_token", "channels", "url", "api_key"})


def _problems(
    err: ValidationError, file: str, model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = (*prefix, *e["loc"])
        # Never echo a value that may be a secret.
        secretish = any(str(p) in _SECRET_KEYS for p in loc)
        out.append(Problem(file, _key_of(loc), _message(e, model, value_hidden=secretish)))
    return out


# --------------------------------------------------------------------------- loading


def find_config(explicit: Path | None) -> Path | None:
    """The config file to use: the given one, else ./salesbridge.toml if present, else None."""
    if explicit is not None:
        return explicit
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a UserError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError([Problem(str(path), "", "file not found; check the path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError([Problem(str(path), "", f"cannot read the file: {exc}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(
            [Problem(str(path), "", f"invalid TOML: {exc}; fix the syntax at that line")]
        ) from None


def load_config(path: Path | None, *, data: dict[str, Any] | None = None) -> LoadedConfig:
    """Load and validate a config file (or the embedded defaults when ``path`` is None).

    Raises UserError listing every problem found in the file.
    """
    file = str(path) if path else "(defaults)"
    raw = data if data is not None else (read_toml(path) if path else {})
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems += _problems(exc, file, Config)
    connectors: dict[str, ConnectorConfig] = {}
    raw_connectors = raw.get("connectors", {})
    if isinstance(raw_connectors, dict):
        for name, table in raw_connectors.items():
            cfg, errs = _load_connector(file, name, table)
            problems += errs
            if cfg is not None:
                connectors[name] = cfg
    if config is not None:
        problems += _cross_check(config, file)
    if problems or config is None:
        raise UserError(problems)
    base = path.parent if path else Path.cwd()
    for name, cfg in connectors.items():
        # Paths in a connector's table are relative to the config file, like the mapping.
        updates = {
            k: base / v
            for k, v in cfg.__dict__.items()
            if isinstance(v, Path) and not v.is_absolute() and k != "mapping"
        }
        if updates:
            connectors[name] = cfg.model_copy(update=updates)
    return LoadedConfig(config, path, connectors)


def _cross_check(config: Config, file: str) -> list[Problem]:
    """References between sections, which pydantic cannot see one section at a time."""
    out: list[Problem] = []
    for name, team in config.teams.items():
        if team.parent is not None and team.parent not in config.teams:
            out.append(
                Problem(
                    file,
                    f"[teams.{name}] parent",
                    f"unknown team {team.parent!r}; define [teams.{team.parent}]",
                )
            )
    for name in config.teams:
        seen, cur = {name}, config.teams[name].parent
        while cur is not None and cur in config.teams:
            if cur in seen:
                out.append(
                    Problem(
                        file,
                        f"[teams.{name}] parent",
                        "teams form a cycle through their parents; break it",
                    )
                )
                break
            seen.add(cur)
            cur = config.teams[cur].parent
    for name, rec in config.recipients.items():
        for t in rec.teams:
            if t not in config.teams:
                out.append(
                    Problem(
                        file,
                        f"[recipients.{name}] teams",
                        f"unknown team {t!r}; define [teams.{t}] or fix the name",
                    )
                )
    if config.recipients and any(r.email for r in config.recipients.values()) and not config.smtp:
        out.append(
            Problem(
                file,
                "[smtp]",
                "recipients have e-mail addresses but no [smtp] "
                "section says how to send mail; add [smtp] host and sender",
            )
        )
    return out


def _load_connector(
    file: str, name: str, table: Any
) -> tuple[ConnectorConfig | None, list[Problem]]:
    section = f"[connectors.{name}]"
    if not isinstance(table, dict):
        return None, [Problem(file, section, "must be a table with at least a kind key")]
    kind = table.get("kind")
    kinds = connector_kinds()
    if not isinstance(kind, str) or not kind:
        return None, [
            Problem(
                file,
                f"{section} kind",
                f"required key is missing; set it to one of: {', '.join(kinds)}",
            )
        ]
    if kind not in kinds:
        close = difflib.get_close_matches(kind, kinds, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return None, [
            Problem(
                file,
                f"{section} kind",
                f"unknown connector kind {kind!r}; {hint}installed: {', '.join(kinds)}",
            )
        ]
    model = connector_class(kind).config_model
    try:
        cfg = model.model_validate(table)
    except ValidationError as exc:
        return None, _problems(exc, file, model, prefix=("connectors", name))
    return cfg, []


def dump_problems(problems: Iterable[Problem]) -> list[dict[str, str]]:
    return [{"file": p.file, "key": p.key, "message": p.message} for p in problems]

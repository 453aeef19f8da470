"""Config loading: every bad file names the file, the [section] key and the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.errors import UserError
from bridge.secrets import SecretRef
from tests.conftest import REPO

DATA = Path(__file__).parent / "data" / "configs"

# file, exact key named, fragment of the message (the fix)
BAD_FILES = [
    ("literal_secret.toml", "[smtp] password", "environment variable and write the reference"),
    ("typo_key.toml", "[sync] conflict_polcy", "did you mean 'conflict_policy'"),
    ("bad_policy.toml", "[sync] conflict_policy", "'newest_wins' or 'review'"),
    ("bad_timezone.toml", "timezone", "IANA name such as Asia/Shanghai"),
    ("unknown_kind.toml", "[connectors.crm] kind", "did you mean 'memory'"),
    ("missing_kind.toml", "[connectors.crm] kind", "set it to one of: "),
    ("bad_duration.toml", "[connectors.crm] interval", 'such as 30, "30s", "5m"'),
    ("connector_typo.toml", "[connectors.crm] page_sise", "did you mean 'page_size'"),
    ("recipient_unknown_team.toml", "[recipients.li] teams", "define [teams.west]"),
    ("password_in_url.toml", "[store] url", 'url = "env:SALESBRIDGE_DB_URL"'),
    ("duplicate_stage.toml", "[lifecycle] stages", "keys must be unique"),
    ("bad_stage_key.toml", "[[lifecycle.stages]] (item 1) key", "fix the value"),
    ("bad_toml.toml", "", "invalid TOML: Expected ']'"),
    ("breaker_range.toml", "[sync] breaker_threshold", "less than or equal to 1"),
    ("channel_literal.toml", "[recipients.li] channels (item 1)", "literal secret"),
    ("bad_language.toml", "[recipients.li] language", "'en' or 'zh-CN'"),
]


@pytest.mark.parametrize(("name", "key", "fragment"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_config_names_file_key_and_fix(name: str, key: str, fragment: str) -> None:
    path = DATA / name
    with pytest.raises(UserError) as info:
        load_config(path)
    problems = info.value.problems
    matching = [p for p in problems if p.key == key]
    assert matching, f"no problem names {key!r}: {[str(p) for p in problems]}"
    assert all(p.file == str(path) for p in problems)
    assert any(fragment in p.message for p in matching), [p.message for p in matching]
    # The rendered line follows "file: [section] key <- message".
    line = str(matching[0])
    assert line.startswith(f"{path}: {key} <- " if key else f"{path} <- ")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(UserError) as info:
        load_config(DATA / "many_problems.toml")
    keys = {p.key for p in info.value.problems}
    assert keys == {
        "timezone",
        "[sync] conflict_policy",
        "[sync] max_workerz",
        "[connectors.crm] interval",
    }


def test_literal_secret_value_is_never_echoed() -> None:
    for name, secret in [
        ("literal_secret.toml", "hunter2-very-secret"),
        ("channel_literal.toml", "secret-hook-token-123"),
        ("password_in_url.toml", "s3cret-pw"),
    ]:
        with pytest.raises(UserError) as info:
            load_config(DATA / name)
        assert secret not in str(info.value)


def test_recipient_email_checked_with_language() -> None:
    with pytest.raises(UserError) as info:
        load_config(DATA / "bad_language.toml")
    assert {p.key for p in info.value.problems} == {
        "[recipients.li] language",
        "[recipients.li] email",
    }


def test_example_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(REPO / "config.example.toml", tmp_path / "salesbridge.toml")
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    loaded = load_config(tmp_path / "salesbridge.toml")
    cfg = loaded.config
    assert cfg.timezone == "Asia/Shanghai"
    assert [s.key for s in cfg.lifecycle.stages][:2] == ["lead", "qualification"]
    assert cfg.lifecycle.get("delivery").optional
    assert cfg.teams["east"].parent == "china"
    assert cfg.smtp is not None and cfg.smtp.password == SecretRef("SMTP_PASSWORD")
    assert loaded.connectors["crm"].kind == "memory"
    # Relative paths resolve against the file's folder, not the working directory.
    assert loaded.mapping_path("crm") == tmp_path / "mappings" / "memory.toml"
    assert loaded.store_url() == f"sqlite:///{tmp_path / 'salesbridge.db'}"


def test_defaults_without_a_file() -> None:
    loaded = load_config(None)
    assert loaded.connectors == {}
    assert len(loaded.config.lifecycle.stages) == 6
    assert loaded.config.store.url == "sqlite:///salesbridge.db"


def test_secret_reference_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = SecretRef("SB_TEST_SECRET")
    monkeypatch.delenv("SB_TEST_SECRET", raising=False)
    with pytest.raises(UserError, match="SB_TEST_SECRET is not set"):
        ref.reveal()
    monkeypatch.setenv("SB_TEST_SECRET", "abc-123-xyz")
    assert ref.reveal() == "abc-123-xyz"
    assert "abc-123-xyz" not in repr(ref) and "abc-123-xyz" not in str(ref)


def test_cli_reports_problems_with_exit_2_and_no_traceback() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "config",
            "check",
            "--config",
            str(DATA / "many_problems.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "4 problem(s) to fix" in proc.stderr
    assert "[sync] max_workerz <- unknown key; did you mean 'max_workers'?" in proc.stderr

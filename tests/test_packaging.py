"""What a wheel install carries: every package, and the files ops staff start from.

Ops staff install salesbridge with pip, not from a checkout, so the default mappings, the rule
pack and the example config must travel in the wheel (as ``bridge._shipped``) and be found
there by ``bridge.shipped`` and ``salesbridge init``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set(find_packages(str(REPO), include=["bridge*", "connectors*"]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        timeout=240,
    )
    (whl,) = out.glob("salesbridge-*.whl")
    root = out / "site"
    with zipfile.ZipFile(whl) as z:
        z.extractall(root)
    return root


def test_wheel_carries_mappings_rules_and_example_config(wheel: Path) -> None:
    shipped = wheel / "bridge" / "_shipped"
    assert sorted(p.name for p in (shipped / "mappings").glob("*.toml")) == sorted(
        p.name for p in (REPO / "mappings").glob("*.toml")
    )
    assert (shipped / "rules" / "default.toml").read_bytes() == (
        REPO / "rules" / "default.toml"
    ).read_bytes()
    assert (shipped / "config.example.toml").read_bytes() == (
        REPO / "config.example.toml"
    ).read_bytes()
    assert list(wheel.glob("bridge/store/migrations/versions/0001_*.py"))
    assert (wheel / "bridge" / "digest" / "templates").is_dir()


def test_installed_copy_finds_its_files_and_inits_a_workspace(wheel: Path, tmp_path: Path) -> None:
    # Run the unpacked wheel, not the checkout: -I ignores PYTHONPATH and the user site, so
    # put the wheel first on sys.path by hand; the dependencies come from this venv.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import bridge, bridge.shipped as s;"
        "assert bridge.__file__.startswith(sys.argv[1]), bridge.__file__;"
        "print(s.default_mapping('jira')); print(s.default_rules());"
        "from bridge.rules.loader import default_pack_path; print(default_pack_path());"
        "sys.argv = ['salesbridge', 'init', sys.argv[2]];"
        "from bridge.cli import main; main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(wheel), str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    jira, rules, pack = out.stdout.splitlines()[:3]
    assert jira == str(wheel / "bridge" / "_shipped" / "mappings" / "jira.toml")
    assert rules == pack == str(wheel / "bridge" / "_shipped" / "rules" / "default.toml")
    ws = tmp_path / "ws"
    assert (ws / "salesbridge.toml").read_text() == (REPO / "config.example.toml").read_text()
    assert (ws / "mappings" / "pipedrive.toml").is_file()
    assert (ws / "rules" / "default.toml").is_file()
    check = subprocess.run(
        [sys.executable, "-m", "bridge", "config", "check", "-c", str(ws / "salesbridge.toml")],
        capture_output=True,
        text=True,
        cwd=ws,
        env={**env, "PYTHONPATH": str(wheel)},
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout and "1 connector(s)" in check.stdout, check.stdout


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    def init(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "init", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert init().returncode == 0
    edited = tmp_path / "mappings" / "jira.toml"
    edited.write_text("# mine\n")
    again = init()
    assert again.returncode == 2
    assert "jira.toml" in again.stderr and "--force" in again.stderr, again.stderr
    assert edited.read_text() == "# mine\n"
    assert init("--force").returncode == 0
    assert edited.read_text() == (REPO / "mappings" / "jira.toml").read_text()

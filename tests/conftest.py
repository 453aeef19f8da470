"""Fixtures shared by every test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO / ".." / "shared").resolve()

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared specs and samples, beside the checkout (CI has them at the same place)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need ../shared beside the checkout")
    return SHARED


def pg_url() -> str | None:
    """The PostgreSQL URL for store tests, or None when explicitly told to skip them.

    PostgreSQL tests never skip silently: without SALESBRIDGE_SKIP_POSTGRES=1 an unreachable
    server is a failure.
    """
    if os.environ.get("SALESBRIDGE_SKIP_POSTGRES") == "1":
        return None
    return os.environ.get("SALESBRIDGE_TEST_PG_URL", DEFAULT_PG_URL)


@pytest.fixture
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run a test inside its own temporary directory."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path

"""The files salesbridge ships for ops staff to start from: the example config, the default
mapping of every connector kind and the default rule pack.

In a source checkout they are the repository's own ``config.example.toml``, ``mappings/`` and
``rules/``; an installed wheel carries the same files as the data of ``bridge._shipped`` (see
``[tool.setuptools]`` in pyproject.toml). Either way this module gives their paths.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def shipped_root() -> Path:
    """The folder holding ``config.example.toml``, ``mappings/`` and ``rules/``."""
    if (_CHECKOUT / "mappings").is_dir() and (_CHECKOUT / "rules").is_dir():
        return _CHECKOUT
    # ``bridge`` is a regular package installed as plain files, so this is a real folder
    # (``bridge._shipped`` itself has no __init__ and would give a namespace MultiplexedPath).
    return Path(str(resources.files("bridge") / "_shipped"))


def mappings_dir() -> Path:
    return shipped_root() / "mappings"


def default_mapping(kind: str) -> Path:
    """The shipped default mapping of a connector kind (it may not exist for third-party kinds)."""
    return mappings_dir() / f"{kind}.toml"


def default_rules() -> Path:
    return shipped_root() / "rules" / "default.toml"


def example_config() -> Path:
    return shipped_root() / "config.example.toml"

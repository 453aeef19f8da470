"""Render the HTML digest of the demo data in headless Chromium, at phone (390 px) and desktop
(1200 px) width, to PNG files: the pictures in docs/digest.md.

    .venv/bin/python scripts/render_digest.py [--out docs/img] [--chromium PATH]

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and, for the Chinese digest, a
CJK font (``apt-get install -y fonts-noto-cjk``). Everything runs offline: the digest is
built from generated projects in an in-memory store, and Chromium gets a fresh profile with
networking, sync and updates switched off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bridge.config import load_config
from bridge.demo_data import DemoOptions, generate
from bridge.digest import load_pack, render_digest
from bridge.rules.sweep import calendars_from_config, managers_from_config, sweep
from bridge.store import Store

REPO = Path(__file__).resolve().parent.parent
CONFIG = {
    "timezone": "Asia/Shanghai",
    "teams": {
        "sales": {"label": "Sales", "label_zh": "销售部"},
        "east": {"parent": "sales", "label": "East", "label_zh": "华东区"},
        "enterprise": {"parent": "sales", "label": "Enterprise", "label_zh": "大客户部"},
    },
    "recipients": {
        "anna": {"name": "Anna Schmidt", "language": "en", "teams": ["enterprise"]},
        "li": {"name": "Li Na", "language": "zh-CN", "teams": ["east"]},
    },
}
# (recipient, language, width, height, file name)
SHOTS = [
    ("anna", "en", 390, 5000, "digest-en-390.png"),
    ("anna", "en", 1200, 4300, "digest-en-1200.png"),
    ("li", "zh-CN", 390, 5000, "digest-zh-390.png"),
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def find_chromium(explicit: str | None) -> str:
    for name in [explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    sys.exit(
        "Chromium is not installed. On Debian: apt-get install -y chromium fonts-noto-cjk "
        "(or pass --chromium PATH)"
    )


def digests() -> dict[tuple[str, str], str]:
    """The demo's HTML digests by (recipient, language)."""
    opts = DemoOptions()
    loaded = load_config(None, data=CONFIG)
    with Store.open("sqlite://") as store:
        store.put_projects(list(generate(opts)))
        sweep(
            store,
            load_pack(loaded),
            now=opts.now,
            calendars=calendars_from_config(loaded.config),
            managers=managers_from_config(loaded.config),
        )
        return {
            (who, lang): render_digest(store, loaded, who, lang, opts.now)[0]
            for who, lang, *_ in SHOTS
        }


def screenshot(chromium: str, html: Path, png: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sb-chromium-") as profile:
        subprocess.run(  # noqa: S603 - our own argument list, no shell
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default=None)
    args = parser.parse_args()
    chromium = find_chromium(args.chromium)
    args.out.mkdir(parents=True, exist_ok=True)
    pages = digests()
    with tempfile.TemporaryDirectory(prefix="sb-digest-") as tmp:
        for who, lang, width, height, name in SHOTS:
            html = Path(tmp) / f"{who}-{lang}.html"
            html.write_text(pages[(who, lang)], encoding="utf-8")
            png = args.out / name
            screenshot(chromium, html, png, width, height)
            print(f"wrote {png} ({width} px wide)")


if __name__ == "__main__":
    main()

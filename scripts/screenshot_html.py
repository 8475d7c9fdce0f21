"""Render a page (a batch's index.html) in headless Chromium: a PNG screenshot, or the DOM after its scripts ran.

    python scripts/screenshot_html.py OUT/index.html shot.png [--size 1400x1000] [--hash sort=s:asc]
    python scripts/screenshot_html.py OUT/index.html --dom dom.html       # the DOM after the page's JavaScript

Needs chromium (Debian: apt-get install chromium). The page must render without network:
Chromium runs with networking pointed at a closed proxy, so a page fetching anything shows it broken.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def _base_cmd(exe: str, profile: str) -> list[str]:
    return [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            "--virtual-time-budget=3000"]


def render(page: Path, *, png: Path | None = None, size: str = "1400x1000", hash_: str = "", timeout: float = 120) -> str:
    """Screenshot `page` to `png` (when given) and return its DOM after the page's scripts ran."""
    exe = browser()
    if exe is None:
        raise RuntimeError("no chromium found (apt-get install chromium)")
    url = page.resolve().as_uri() + (f"#{hash_}" if hash_ else "")
    w, h = size.lower().split("x")
    with tempfile.TemporaryDirectory() as profile:
        if png is not None:
            subprocess.run(_base_cmd(exe, profile) + [f"--window-size={w},{h}", f"--screenshot={png.resolve()}", url],
                           check=True, capture_output=True, timeout=timeout)
        dom = subprocess.run(_base_cmd(exe, profile) + ["--dump-dom", url], check=True, capture_output=True,
                             text=True, timeout=timeout)
    return dom.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("png", type=Path, nargs="?")
    ap.add_argument("--size", default="1400x1000", help="window WIDTHxHEIGHT in CSS pixels")
    ap.add_argument("--hash", default="", help="address fragment, e.g. sort=s:asc or grid=S")
    ap.add_argument("--dom", type=Path, help="also write the DOM after the page's scripts ran")
    a = ap.parse_args(argv)
    dom = render(a.page, png=a.png, size=a.size, hash_=a.hash)
    if a.dom:
        a.dom.write_text(dom)
    if a.png:
        print(f"screenshot -> {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Open a case view in headless Chromium: read the state the page writes into its DOM, take a screenshot.

For tests and ``benchmarks/view_check.py``; installs nothing. On Debian: ``apt-get install chromium``
(or set ``MMCCD_BROWSER`` to a Chrome/Chromium binary). WebGL2 runs on the CPU through SwiftShader, so no
GPU or display is needed. One browser run per check prints the DOM and writes the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
          "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
          "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--enable-logging=stderr")
_IDS = ("mmccd-status", "readout", "mmccd-errors")
_CONSOLE = re.compile(r"CONSOLE[^\]]*\] \"(.*)\", source: (\S+)")
_CONSOLE_ERROR = re.compile(r"uncaught|niivue-error|\berror\b", re.IGNORECASE)
_HARMLESS = ("GL Driver Message",)  # SwiftShader's performance notes about readPixels


def find_browser() -> str | None:
    """Path of a Chrome/Chromium binary: $MMCCD_BROWSER, else the first of `BROWSERS` on PATH, else None."""
    env = os.environ.get("MMCCD_BROWSER")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@dataclass
class PageCheck:
    """What a headless browser saw of a case view.

    state:   #mmccd-status data-state: "loaded", "webgl-missing", "error", or "loading" (did not finish)
    drawn:   non-black pixels per view, counted by the page right after drawing ([] when not loaded)
    errors:  errors the page caught (window errors, rejections, console.error), then console errors in the log
    readout: the data-* attributes of #readout (vox, mm, score, score-niivue, pred, gt)"""

    state: str
    status_text: str
    drawn: list[int]
    errors: list[str]
    readout: dict[str, str]
    screenshot: Path | None
    console: list[str] = field(default_factory=list)
    timing: str = ""  # the page's own marks, "step:ms,..." (virtual time under --virtual-time-budget)

    @property
    def ok(self) -> bool:
        return self.state == "loaded" and not self.errors and bool(self.drawn) and min(self.drawn) > 0


class _Elements(HTMLParser):
    """Attributes and text of the elements with the ids in `_IDS`."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "img", "input", "meta", "link", "hr", "source", "wbr", "col", "area", "base"):
            return
        found = dict((k, v or "") for k, v in attrs)
        ident = found.get("id")
        if ident in _IDS:
            self.attrs[ident] = found
            self.text[ident] = ""
        self._open.append(ident if ident in _IDS else None)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident is not None:
                self.text[ident] += data


def _run(browser: str, flags: Sequence[str], url: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="mmccd-browser-") as profile:
        cmd = [browser, *_FLAGS, f"--user-data-dir={profile}", *flags, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                              env={**os.environ, "HOME": profile})  # the profile and crash dumps stay in the temp dir


def check_page(page: str | Path, screenshot: str | Path | None = None, *, fragment: str = "",
               browser: str | None = None, window: tuple[int, int] = (1400, 900), budget_ms: int = 30000,
               timeout_s: float = 180.0, flags: Sequence[str] = ()) -> PageCheck:
    """Open `page` (file path) in headless Chromium and report its state; write a PNG to `screenshot` if given.

    fragment: appended to the URL after '#', e.g. "vox=120,80,70" to start the crosshair there
    flags:    extra browser flags, e.g. ("--disable-webgl2",) to see the fallback"""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chrome/Chromium found (looked for $MMCCD_BROWSER and "
                                f"{', '.join(BROWSERS)} on PATH); on Debian: apt-get install chromium")
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    shot = Path(screenshot).resolve() if screenshot is not None else None
    flags = [f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}", *flags, "--dump-dom"]
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.unlink(missing_ok=True)
        flags.append(f"--screenshot={shot}")  # taken after the budget, like the DOM
    done = _run(browser, flags, url, timeout_s)
    if "mmccd-status" not in done.stdout:
        raise RuntimeError(f"{browser} printed no page for {url} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    if shot is not None and not shot.exists():
        raise RuntimeError(f"{browser} wrote no screenshot to {shot} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    parser = _Elements()
    parser.feed(done.stdout)
    status = parser.attrs.get("mmccd-status", {})
    console = [f"{m.group(1)} ({m.group(2)})" for m in _CONSOLE.finditer(done.stderr)]
    errors = [e for e in parser.text.get("mmccd-errors", "").splitlines() if e.strip()]
    errors += [c for c in console if _CONSOLE_ERROR.search(c) and not any(h in c for h in _HARMLESS)
               and not any(e in c for e in errors)]  # console.error lines the page already caught count once
    readout = {k[5:]: v for k, v in parser.attrs.get("readout", {}).items() if k.startswith("data-")}
    drawn = [int(n) for n in status.get("data-drawn", "").split(",") if n.strip()]
    return PageCheck(state=status.get("data-state", "missing"), status_text=parser.text.get("mmccd-status", "").strip(),
                     drawn=drawn, errors=errors, readout=readout, screenshot=shot, console=console,
                     timing=status.get("data-ms", ""))


def image_spread(png: str | Path) -> tuple[int, float]:
    """(number of distinct colours, std of the grey levels) of a PNG: a blank screenshot has ~1 colour."""
    from matplotlib.image import imread  # matplotlib only when a screenshot is checked

    rgb = np.asarray(imread(str(png)))[..., :3]
    flat = (np.round(rgb * 255) if rgb.dtype.kind == "f" else rgb).astype(np.int64).reshape(-1, 3)
    codes = flat[:, 0] * 65536 + flat[:, 1] * 256 + flat[:, 2]
    return int(np.unique(codes).size), float(flat.mean(axis=1).std())

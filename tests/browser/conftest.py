"""A real browser for the console: Debian's headless Chromium driven by Playwright,
against the whole stack `make run` starts (gunicorn, worker, beat, Redis, sandbox).

Playwright's own browser downloads are not used (`executable_path` points at the
system Chromium, which `make test` installs as root). Without Chromium the tests
skip and say why, except on CI (CI=true), where a missing browser is a failure.
Screenshots go to tests/browser/screenshots/ (or $HERALD_SCREENSHOTS); each test
prints the paths it wrote.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import RunningStack

CHROMIUM = os.environ.get("HERALD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("HERALD_SCREENSHOTS") or Path(__file__).parent / "screenshots")


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (as root: apt-get install -y chromium)"
    return None


@pytest.fixture(scope="session")
def playwright_browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests must run on CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def stack(playwright_browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # Module scope: the stack must be gone before other e2e stacks start, since stacks
    # of one test run share its database schema and Redis queue prefix.
    running = RunningStack(
        tmp_path_factory.mktemp("browser-stack"),
        {"HERALD_API_WORKERS": "1", "HERALD_WORKER_CONCURRENCY": "8"},
    )
    running.wait_ready()
    yield running
    running.stop()


class Shots:
    """Saves full-page screenshots under SHOTS and remembers their paths."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.paths: list[Path] = []

    def take(self, page: Any, label: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    return Shots(request.node.name.removeprefix("test_"))


def sign_in(page: Any, base: str, api_key: str) -> None:
    page.goto(f"{base}/console/")
    page.get_by_label("API key").fill(api_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/console/")


@pytest.fixture
def page(playwright_browser: Any, stack: Any) -> Iterator[Any]:
    """A signed-in page in a fresh browser context (its own cookies)."""
    context = playwright_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    errors: list[str] = []
    # A script error or a Content-Security-Policy violation shows up as a console error.
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(tab, stack.info["api"], stack.info["api_key"])
    yield tab
    context.close()
    assert not errors, f"errors in the browser console: {errors}"

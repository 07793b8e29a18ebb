"""What the console's browser tests share: the composed gateway served on loopback with its
users, a headless Chromium, and the console's sign-in."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright

from gateway import devkeys
from gateway.cli.admin import add_user
from gateway.cli.simulate import serve_app
from gateway.operators.sessions import AuthRuntime
from gateway.records.base import Role
from gateway.settings import Settings
from tests.conftest import UNIT
from tests.e2e.carrier import Gateway, free_port, gateway_env
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.sessions.harness import PASSWORD, TEST_HASHER, compose, make_auth, sqlite_store

CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = int(10_000 * UNIT)
PHONE = {"width": 390, "height": 844}  # a narrow phone screen


@contextlib.asynccontextmanager
async def console_gateway(
    tmp_path: Path,
    rest: FakeCarrierRest,
    role: Role = Role.OPERATOR,
    *,
    users: Mapping[str, Role] | None = None,
    **env: str,
) -> AsyncIterator[Gateway]:
    """The composed app (sessions, API, console) served by uvicorn on a free loopback port,
    with one user, ``ada``, of ``role`` (or ``users``: name to role, all with ``PASSWORD``);
    ``env`` adds settings."""
    port = free_port()
    settings = devkeys.apply(Settings.from_env(gateway_env(tmp_path, port, rest, **env)))
    async with sqlite_store(tmp_path) as store:
        for name, user_role in (users or {"ada": role}).items():
            await add_user(store, TEST_HASHER, name, user_role, PASSWORD)
        app = compose(settings)
        auth: AuthRuntime = make_auth(settings, store)
        started = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(a: Any) -> AsyncIterator[None]:
            async with started(a):
                a.state.runtime.auth = auth  # what start_runtime does once integrated
                yield

        app.router.lifespan_context = lifespan
        async with serve_app(app, port) as url:
            yield Gateway(url, settings, app, rest)


@contextlib.asynccontextmanager
async def browser(
    tmp_path: Path, viewport: Mapping[str, int] | None = None
) -> AsyncIterator[BrowserContext]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    async with async_playwright() as p:
        options: dict[str, Any] = {} if viewport is None else {"viewport": dict(viewport)}
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # fresh profile per test
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            **options,
        )
        try:
            yield context
        finally:
            await context.close()


def watch_console(page: Page, problems: list[str]) -> None:
    def on_message(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_message)
    page.on("pageerror", lambda exc: problems.append(str(exc)))


async def sign_in(page: Page, url: str, user: str = "ada") -> None:
    await page.goto(url + "/console/")
    await page.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)
    await page.fill("#username", user)
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await page.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)


async def sign_out(page: Page) -> None:
    await page.click("#logout")
    await page.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)


async def page_width(page: Page) -> int:
    """How wide the document is: more than the viewport means the page scrolls sideways."""
    width: int = await page.evaluate("document.documentElement.scrollWidth")
    return width

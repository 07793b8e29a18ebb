"""The operator console in a real browser: Debian's chromium driven by playwright, against a
real uvicorn on loopback, with a simulated carrier call placed through the real webhooks and
media stream. Log in, watch the call appear live, open a second tab, log out in one and watch
the other leave. A screenshot is saved under the test's tmp_path (its path is printed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from gateway.records.base import Role
from tests.console.harness import WAIT_MS, browser, console_gateway, sign_in, watch_console
from tests.e2e.carrier import caller_audio, place_call
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.sessions.harness import PASSWORD

pytestmark = pytest.mark.e2e


async def test_login_live_call_two_tabs_logout(tmp_path: Path, rest: FakeCarrierRest) -> None:
    problems: list[str] = []
    async with console_gateway(tmp_path, rest) as gw, browser(tmp_path) as context:
        first = await context.new_page()
        watch_console(first, problems)
        await first.goto(gw.url + "/console/")
        await first.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)

        # A wrong password is refused without a hint of why.
        await first.fill("#username", "ada")
        await first.fill("#password", "not the password")
        await first.click("#login-button")
        await first.wait_for_selector("#login-error:not([hidden])", timeout=WAIT_MS)

        await first.fill("#password", PASSWORD)
        await first.click("#login-button")
        await first.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)
        assert await first.text_content("#who-name") == "ada"
        assert await first.is_hidden("#audit-panel")  # an operator does not see the audit trail
        assert await first.is_hidden("#keys-panel")  # nor the keys (admins only)
        cookies = {c["name"]: c for c in await context.cookies()}
        assert (
            cookies["voicegw_access"]["httpOnly"]
            and cookies["voicegw_access"]["sameSite"] == "Strict"
        )
        assert not cookies["voicegw_csrf"]["httpOnly"]
        assert await first.evaluate("document.cookie.includes('voicegw_access')") is False

        # A simulated Twilio call, through the signed webhook and the media stream.
        leg = await place_call(gw, "twilio")
        try:
            await leg.play(caller_audio(25), realtime=False)
            call = await gw.call("twilio", leg.ticket.call_id)
            assert call is not None
            row = f"tr[data-call-id='{call.call_id}']"
            await first.wait_for_selector(row, timeout=WAIT_MS)
            assert "twilio" in (await first.text_content(row) or "")
            await first.wait_for_selector(f"{row} >> text=streaming", timeout=WAIT_MS)
            await first.wait_for_selector("#providers >> text=echo", timeout=WAIT_MS)

            # A second tab shares the session and sees the same call.
            second = await context.new_page()
            watch_console(second, problems)
            await second.goto(gw.url + "/console/")
            await second.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)
            await second.wait_for_selector(row, timeout=WAIT_MS)

            shot = tmp_path / "console.png"
            await first.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"console screenshot: {shot}")

            # Log out in the second tab: the first leaves too (BroadcastChannel).
            await second.click("#logout")
            await second.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)
            await first.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)
            assert await first.is_hidden("#app-view")

            # And the session is over on the server, not just in the pages.
            await first.reload()
            await first.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)
            names = {c["name"] for c in await context.cookies()}
            assert not names & {"voicegw_access", "voicegw_refresh", "voicegw_csrf"}
        finally:
            await leg.stop()
    assert not [p for p in problems if "401" not in p and "403" not in p], problems


async def test_two_tabs_refresh_without_racing(tmp_path: Path, rest: FakeCarrierRest) -> None:
    """Both tabs refresh at once: the Web Lock lets one present the refresh token, the other
    reuses the new session, so reuse detection never fires and both stay signed in."""
    problems: list[str] = []
    async with console_gateway(tmp_path, rest) as gw, browser(tmp_path) as context:
        first = await context.new_page()
        watch_console(first, problems)
        await first.goto(gw.url + "/console/")
        await first.fill("#username", "ada")
        await first.fill("#password", PASSWORD)
        await first.click("#login-button")
        await first.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)
        second = await context.new_page()
        await second.goto(gw.url + "/console/")
        await second.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)

        # The access cookie lapses (as it does after 24 h); the refresh cookie remains.
        await context.clear_cookies(name="voicegw_access")
        script = "fetch('/api/v1/calls').then(r => r.status)"
        assert await first.evaluate(script) == 401
        # Both tabs refresh at the same moment.
        refreshed = await _gather(
            first.evaluate(_REFRESH_FROM_PAGE), second.evaluate(_REFRESH_FROM_PAGE)
        )
        assert refreshed == [200, 200], refreshed
        assert await first.evaluate(script) == 200
        assert await second.evaluate(script) == 200
    assert not [p for p in problems if "401" not in p], problems


# The console's own refresh path (app.js ``refresh``), called the way a 401 triggers it.
_REFRESH_FROM_PAGE = """
async () => navigator.locks.request('voicegw-refresh', async () => {
  const now = Date.now() / 1000;
  const s = await fetch('/auth/session');
  if (s.ok && (await s.json()).expires_at - now > 60) return 200;
  const csrf = document.cookie.split('; ').find(c => c.startsWith('voicegw_csrf=')).split('=')[1];
  const r = await fetch('/auth/refresh', {method: 'POST', headers: {'X-CSRF-Token': csrf}});
  return r.status;
})
"""


async def _gather(*aws: Any) -> list[Any]:
    return list(await asyncio.gather(*aws))


# -- the agents panel ------------------------------------------------------------------------

SUPPORT = "+15550100111"
SALES = "+15550100122"
BILLING = "+15550100133"  # a transfer destination: the console shows its key only
AGENTS = f"""
[agents.support]
default = true
numbers = ["{SUPPORT}"]
providers = ["echo"]
instructions = "You answer the support line."
greeting = "Support, hello."
transfer = {{ billing = "{BILLING}", desk = "sip:desk@pbx.example.com" }}
"""
SALES_AGENT = f"""
[agents.sales]
numbers = ["{SALES}"]
providers = ["echo"]
instructions = "You answer the sales line."
greeting = "<img src=x onerror=alert(1)>Sales!"
end_call = false
"""


def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(AGENTS)
    return path


async def agent_rows(page: Page) -> list[list[str]]:
    script = (
        "() => [...document.querySelectorAll('#agents tbody tr')]"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    rows: list[list[str]] = await page.evaluate(script)
    return rows


async def test_operator_sees_the_agents_and_no_reload_button(
    tmp_path: Path, rest: FakeCarrierRest
) -> None:
    problems: list[str] = []
    env = {"VOICEGW_AGENTS_FILE": str(agents_file(tmp_path))}
    async with (
        console_gateway(tmp_path, rest, Role.OPERATOR, **env) as gw,
        browser(tmp_path) as context,
    ):
        page = await context.new_page()
        watch_console(page, problems)
        await sign_in(page, gw.url)
        await page.wait_for_selector("#agents tr[data-agent=support]", timeout=WAIT_MS)
        assert await page.is_visible("#agents-panel")
        assert await page.is_hidden("#agents-reload")  # admins only
        [row] = await agent_rows(page)
        name, numbers, providers, tools, transfer, calls_to, greeting = row
        assert name.split() == ["support", "default"]
        assert numbers == "+1********11"
        assert providers == "echo"
        assert tools.split() == ["transfer_call", "end_call"]
        assert transfer.split() == ["billing", "desk"]
        assert calls_to == "+1"  # the country code of its own number
        assert greeting.startswith("Support, hello.")
        assert await page.text_content("#agents-source") == "from the agents file"
        assert await page.text_content("#agents-count") == "1"
        assert await page.text_content("#agents-last-reload") == "not reloaded since start"
        text = await page.inner_text("body")
        for number in (SUPPORT, BILLING):
            assert number not in text and number[2:] not in text
    assert not [p for p in problems if "401" not in p], problems  # 401: before signing in


async def test_admin_reloads_a_good_file_then_a_bad_one(
    tmp_path: Path, rest: FakeCarrierRest
) -> None:
    problems: list[str] = []
    path = agents_file(tmp_path)
    async with (
        console_gateway(tmp_path, rest, Role.ADMIN, VOICEGW_AGENTS_FILE=str(path)) as gw,
        browser(tmp_path) as context,
    ):
        page = await context.new_page()
        watch_console(page, problems)
        await sign_in(page, gw.url)
        await page.wait_for_selector("#agents tr[data-agent=support]", timeout=WAIT_MS)
        assert await page.is_visible("#agents-reload")

        # A good file: the table shows the new agent (the greeting as text, never as HTML).
        path.write_text(AGENTS + SALES_AGENT)
        await page.click("#agents-reload")
        await page.wait_for_selector("#agents tr[data-agent=sales]", timeout=WAIT_MS)
        assert "Reloaded: 2 agents" in (await page.text_content("#agents-reload-result") or "")
        rows = await agent_rows(page)
        assert [r[0].split()[0] for r in rows] == ["support", "sales"]
        sales = rows[1]
        assert sales[1] == "+1********22" and sales[3] == "—" and sales[4] == "—"
        assert sales[5] == "+1"
        assert sales[6].startswith("<img src=x onerror=alert(1)>Sales!")
        assert await page.locator("#agents img").count() == 0
        assert "applied" in (await page.text_content("#agents-last-reload") or "")
        assert await page.text_content("#agents-count") == "2"
        before = await agent_rows(page)

        # A bad file: the problems listed as text, the table unchanged.
        path.write_text(AGENTS + SALES_AGENT + '\n[agents.sales."<b id=injected>x</b>"]\n')
        await page.click("#agents-reload")
        await page.wait_for_selector("#agents-problems:not([hidden]) li", timeout=WAIT_MS)
        listed = await page.eval_on_selector_all(
            "#agents-problems li", "items => items.map(li => li.textContent)"
        )
        assert len(listed) == 1 and "unknown key" in listed[0], listed
        assert "<b id=injected>" in listed[0]  # shown as text ...
        assert await page.locator("#injected").count() == 0  # ... never parsed as HTML
        assert "Refused" in (await page.text_content("#agents-reload-result") or "")
        await page.wait_for_selector("#agents-last-reload >> text=refused", timeout=WAIT_MS)
        assert await agent_rows(page) == before
        assert set(gw.runtime.agents.book.profiles) == {"support", "sales"}
        shot = tmp_path / "agents.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"console screenshot: {shot}")
    assert not [p for p in problems if "401" not in p and "422" not in p], problems

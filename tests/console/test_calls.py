"""The console's calls in a real browser: the history (filters, "more"), a call's page
(record, timeline, transcript for the roles that may read it), hang-up and transfer of a live
call placed through the real webhooks and media stream, and the outbound call form against the
fake carrier REST API. Every view is also checked on a 390 px wide screen, and hostile text
(greetings, transcripts, audit details) is shown as text."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.async_api import Dialog, Page, expect

from gateway.records.base import AuditQuery, CallRecord, Role
from tests.conftest import UNIT
from tests.console.harness import (
    PHONE,
    WAIT_MS,
    browser,
    console_gateway,
    page_width,
    sign_in,
    sign_out,
    watch_console,
)
from tests.e2e.carrier import CALLEE, Gateway, caller_audio, eventually, place_call
from tests.e2e.test_call_api import record_closed
from tests.fakes.carrier_rest import Behavior, FakeCarrierRest

pytestmark = pytest.mark.e2e

CALLER = "+15550100001"  # what tests/e2e/carrier.py's webhooks send as From
BILLING = "+14155550123"
CALLER_ID = "+15550100009"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
HOSTILE = "<img id=injected src=x onerror=alert(1)>I need my bill"
AGENTS = f"""
[agents.desk]
default = true
numbers = ["{CALLEE}"]
providers = ["echo"]
instructions = "You answer the front desk."
greeting = "<b id=injected-greeting>Desk</b>"
transfer = {{ billing = "{BILLING}" }}
caller_ids = ["{CALLER_ID}"]
"""


def agents_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "agents.toml"
    path.write_text(AGENTS)
    return {"VOICEGW_AGENTS_FILE": str(path)}


async def column(page: Page, table: str, index: int) -> list[str]:
    script = (
        f"() => [...document.querySelectorAll('#{table} tbody tr')]"
        f".map(r => r.cells[{index}].innerText.trim())"
    )
    cells: list[str] = await page.evaluate(script)
    return cells


async def wait_rows(page: Page, table: str, count: int) -> None:
    await expect(page.locator(f"#{table} tbody tr")).to_have_count(count, timeout=WAIT_MS)


async def fits(page: Page) -> None:
    """The page does not scroll sideways on the phone screen."""
    assert await page_width(page) <= PHONE["width"], await page_width(page)


async def seed_history(gw: Gateway) -> str:
    """30 ended calls of ``desk`` and 5 of ``sales`` (newest last), one open call of ``desk``;
    the id of a desk call with an audited event whose detail is hostile text."""
    now = time.time()
    for i in range(35):
        agent = "desk" if i < 30 else "sales"
        await gw.runtime.store.put_call(
            CallRecord(
                call_id=f"call_seed{i:02d}",
                carrier="twilio" if i % 2 else "telnyx",
                carrier_call_id=f"CA{i:032d}",
                started_at=now - 3600 + i * 10,
                ended_at=now - 3600 + i * 10 + 65,
                outcome="hangup",
                providers=("echo",),
                agent=agent,
            )
        )
    await gw.runtime.store.put_call(
        CallRecord("call_seedopen", "twilio", "CA" + "f" * 32, now - 60, agent="desk")
    )
    await gw.runtime.auditor.record(
        "call.transfer",
        "failure",
        actor="otto",
        role="operator",
        entity_type="call",
        entity_id="call_seed07",
        detail={"outcome": "failed", "note": "<b id=injected-detail>x</b>"},
    )
    return "call_seed07"


async def test_operator_filters_pages_and_opens_a_call_on_a_phone(
    tmp_path: Path, rest: FakeCarrierRest
) -> None:
    problems: list[str] = []
    async with (
        console_gateway(tmp_path, rest, Role.OPERATOR, **agents_env(tmp_path)) as gw,
        browser(tmp_path, PHONE) as context,
    ):
        with_detail = await seed_history(gw)
        page = await context.new_page()
        watch_console(page, problems)
        await page.goto(gw.url + "/console/")
        await page.wait_for_selector("body[data-state=signed-out]", timeout=WAIT_MS)
        await fits(page)
        await sign_in(page, gw.url)

        # The first page, newest first: the open call, then the sales calls.
        await wait_rows(page, "history", 25)
        ids = await column(page, "history", 0)
        assert ids[:2] == ["call_seedopen", "call_seed34"]
        assert (await column(page, "history", 5))[:2] == ["open", "hangup"]
        await page.wait_for_selector("#agents tr[data-agent=desk]", timeout=WAIT_MS)
        await fits(page)

        # Filtered by agent and state, then paged with "more" until there is no more.
        await page.fill("#history-agent", "desk")
        await page.select_option("#history-state", "ended")
        await page.click("#history-search")
        first = page.locator("#history tbody tr").first
        await expect(first).to_have_attribute("data-call-id", "call_seed29", timeout=WAIT_MS)
        await wait_rows(page, "history", 25)
        assert await page.is_visible("#history-more")
        await page.click("#history-more")
        await wait_rows(page, "history", 30)
        ids = await column(page, "history", 0)
        assert ids == [f"call_seed{i:02d}" for i in range(29, -1, -1)]
        assert set(await column(page, "history", 2)) == {"desk"}
        await page.wait_for_selector("#history-more", state="hidden", timeout=WAIT_MS)
        await fits(page)

        # Filters with no match, and one the API refuses (its reason shown).
        await page.select_option("#history-carrier", "telnyx")
        await page.fill("#history-outcome", "transferred")
        await page.click("#history-search")
        await page.wait_for_selector("#history-empty:not([hidden])", timeout=WAIT_MS)
        await wait_rows(page, "history", 0)
        await page.fill("#history-outcome", "a\u0000b")
        await page.click("#history-search")
        await page.wait_for_selector("#history-error:not([hidden])", timeout=WAIT_MS)
        assert "outcome" in (await page.text_content("#history-error") or "")

        # A call's page: its record, and its timeline with the hostile detail as text.
        await page.fill("#history-outcome", "")
        await page.select_option("#history-carrier", "")
        await page.click("#history-search")
        await page.wait_for_selector("#history-error", state="hidden", timeout=WAIT_MS)
        await page.click(f"#history tr[data-call-id={with_detail}] button.open-call")
        await page.wait_for_selector(
            "#call-timeline li[data-action='call.transfer']", timeout=WAIT_MS
        )
        assert await page.text_content("#call-id") == with_detail
        assert await page.text_content("#call-state") == "ended"
        assert await page.text_content("#call-fields [data-field=agent]") == "desk"
        assert await page.text_content("#call-fields [data-field=outcome]") == "hangup"
        assert await page.text_content("#call-fields [data-field=duration]") == "1:05"
        step = await page.text_content("#call-timeline li") or ""
        assert "call.transfer failure by otto" in step
        assert "note=<b id=injected-detail>x</b>" in step
        assert await page.locator("#injected-detail").count() == 0
        assert await page.locator("#injected-greeting").count() == 0
        assert await page.is_hidden("#call-actions")  # ended: nothing to hang up
        assert await page.is_hidden("#call-transcript-part")  # an operator: no transcript
        assert page.url.endswith(f"#{with_detail}")
        await fits(page)
        shot = tmp_path / "calls-phone.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"console screenshot: {shot}")

        # The link survives a reload; closing the page forgets it.
        await page.reload()
        await page.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)
        await page.wait_for_selector("#call-timeline li", timeout=WAIT_MS)
        assert await page.text_content("#call-id") == with_detail
        await page.click("#call-close")
        assert await page.is_hidden("#call-panel")
        assert "#" not in page.url
    assert not [p for p in problems if "401" not in p and "400" not in p], problems


async def test_operator_hangs_up_a_live_call(tmp_path: Path, rest: FakeCarrierRest) -> None:
    problems: list[str] = []
    async with (
        console_gateway(tmp_path, rest, Role.OPERATOR, **agents_env(tmp_path)) as gw,
        browser(tmp_path) as context,
    ):
        page = await context.new_page()
        watch_console(page, problems)
        await sign_in(page, gw.url)
        leg = await place_call(gw, "twilio")
        try:
            await leg.play(caller_audio(10), realtime=False)
            call = await gw.call("twilio", leg.ticket.call_id)
            assert call is not None
            row = f"#live-calls tr[data-call-id='{call.call_id}']"
            await page.wait_for_selector(f"{row} >> text=streaming", timeout=WAIT_MS)
            assert "desk" in (await page.text_content(row) or "")
            await page.click(f"{row} button.open-call")
            await page.wait_for_selector("#call-actions:not([hidden])", timeout=WAIT_MS)
            assert await page.text_content("#call-state") == "streaming"
            assert await page.text_content("#call-fields [data-field=from]") == "+1555010••01"
            await page.wait_for_selector("#call-transfers button", timeout=WAIT_MS)
            transfers = await page.eval_on_selector_all(
                "#call-transfers button", "bs => bs.map(b => b.textContent)"
            )
            assert transfers == ["Transfer to billing"]

            # Dismissing the confirmation does nothing.
            asked: list[str] = []

            async def dismiss(dialog: Dialog) -> None:
                asked.append(dialog.message)
                await dialog.dismiss()

            page.once("dialog", dismiss)
            await page.click("#call-hangup")
            await eventually(lambda: asked, 5 * UNIT, "the confirmation")
            assert asked == [f"Hang up call {call.call_id}?"]
            assert await page.is_hidden("#call-action-result")
            live = await gw.call("twilio", leg.ticket.call_id)
            assert live is not None and live.active

            # A refused transfer: the API's reason is shown, the call stays.
            rest.set_response("twilio", Behavior.SERVER_ERROR, call_id=leg.ticket.call_id)

            async def accept(dialog: Dialog) -> None:
                asked.append(dialog.message)
                await dialog.accept()

            page.once("dialog", accept)
            await page.click("#call-transfers button[data-destination=billing]")
            await page.wait_for_selector("#call-action-result.error", timeout=WAIT_MS)
            assert asked[-1] == f"Transfer call {call.call_id} to billing?"
            assert (
                await page.text_content("#call-action-result")
                == "Refused: the carrier did not transfer the call."
            )
            await page.wait_for_selector(
                "#call-timeline li[data-action='call.transfer']", timeout=WAIT_MS
            )
            assert await page.text_content("#call-state") == "streaming"

            # Hang up: the page follows the call to its end and its record.
            rest.set_response("twilio", Behavior.OK, call_id=leg.ticket.call_id)
            page.once("dialog", accept)
            await page.click("#call-hangup")
            await page.wait_for_selector("#call-state >> text=ended", timeout=WAIT_MS)
            await gw.wait_ended(leg.ticket)
            await page.wait_for_selector(
                "#call-fields [data-field=outcome] >> text=operator_hangup", timeout=WAIT_MS
            )
            assert await page.is_hidden("#call-actions")
            hangup = page.locator("#call-timeline li[data-action='call.hangup']")
            assert "success by ada" in (await hangup.text_content() or "")
            await page.wait_for_selector(row, state="detached", timeout=WAIT_MS)
        finally:
            await leg.stop()
        audited = await gw.runtime.store.query_audit(AuditQuery(action="call.hangup"))
        assert [(e.actor, e.outcome) for e in audited] == [("ada", "success")]
    assert not [p for p in problems if "401" not in p and "502" not in p], problems


async def test_admin_reads_the_transcript_an_operator_does_not(
    tmp_path: Path, rest: FakeCarrierRest
) -> None:
    problems: list[str] = []
    users = {"ada": Role.ADMIN, "otto": Role.OPERATOR}
    async with (
        console_gateway(tmp_path, rest, users=users, **agents_env(tmp_path)) as gw,
        browser(tmp_path, PHONE) as context,
    ):
        leg = await place_call(gw, "twilio")
        await leg.play(caller_audio(5), realtime=False)
        call = await gw.call("twilio", leg.ticket.call_id)
        assert call is not None
        assert await gw.runtime.transcripts.append(call, "caller", HOSTILE + " " + "x" * 300)
        assert await gw.runtime.transcripts.append(call, "agent", "Let me transfer you.")
        await leg.stop()
        await gw.wait_ended(leg.ticket)
        await record_closed(gw, call.call_id)

        page = await context.new_page()
        watch_console(page, problems)
        await sign_in(page, gw.url, "ada")
        await page.click(f"#history tr[data-call-id='{call.call_id}'] button.open-call")
        await page.wait_for_selector("#call-transcript li", timeout=WAIT_MS)
        turns = await page.eval_on_selector_all(
            "#call-transcript li", "items => items.map(li => [li.dataset.role, li.innerText])"
        )
        assert [role for role, _ in turns] == ["caller", "agent"]
        assert turns[0][1].startswith("Caller: " + HOSTILE)
        assert turns[1][1] == "Agent: Let me transfer you."
        assert await page.locator("#injected").count() == 0
        assert await page.text_content("#call-fields [data-field=from]") == CALLER
        await fits(page)  # the long turn wraps
        await sign_out(page)

        await sign_in(page, gw.url, "otto")
        await page.click(f"#history tr[data-call-id='{call.call_id}'] button.open-call")
        await page.wait_for_selector(
            "#call-fields [data-field=from] >> text=+1555010••01", timeout=WAIT_MS
        )
        assert await page.is_hidden("#call-transcript-part")
        assert await page.locator("#call-transcript li").count() == 0
        text = await page.inner_text("body")
        assert "I need my bill" not in text and CALLER not in text
    assert not [p for p in problems if "401" not in p], problems


async def test_dial_form_shows_refusals_and_the_placed_call(
    tmp_path: Path, rest: FakeCarrierRest
) -> None:
    problems: list[str] = []
    users = {"ada": Role.ADMIN, "dee": Role.DIALER}
    env = agents_env(tmp_path) | {"VOICEGW_TWILIO_ACCOUNT_SID": ACCOUNT_SID}
    async with (
        console_gateway(tmp_path, rest, users=users, **env) as gw,
        browser(tmp_path, PHONE) as context,
    ):
        page = await context.new_page()
        watch_console(page, problems)
        await sign_in(page, gw.url, "ada")
        assert await page.is_visible("#dial-panel")
        await page.wait_for_selector("#agent-names option[value=desk]", state="attached")

        async def refusal() -> str:
            await page.click("#dial-button")
            await page.wait_for_selector("#dial-result.error", timeout=WAIT_MS)
            text = await page.text_content("#dial-result") or ""
            await page.evaluate("document.getElementById('dial-result').className = ''")
            return text

        assert await refusal() == "Refused: to is required (a string)."
        await page.fill("#dial-to", "+15550100123")
        await page.fill("#dial-from", "+15550100999")
        await page.fill("#dial-agent", "desk")
        assert await refusal() == "Refused: from is not one of the agent's caller_ids."
        await page.fill("#dial-from", CALLER_ID)
        await page.fill("#dial-agent", "<b id=injected>nobody</b>")
        refused = await refusal()
        assert refused.startswith("Refused: ") and await page.locator("#injected").count() == 0
        assert rest.requests_for("twilio") == []
        await fits(page)

        await page.fill("#dial-agent", "desk")
        await page.select_option("#dial-carrier", "twilio")
        await page.click("#dial-button")
        await page.wait_for_selector("#dial-result.ok #dial-call-id", timeout=WAIT_MS)
        call_id = await page.text_content("#dial-call-id") or ""
        assert call_id.startswith("call_")
        [placed] = [r for r in rest.requests_for("twilio") if r.action == "create"]
        assert placed.form()["To"] == "+15550100123" and placed.form()["From"] == CALLER_ID
        await page.click("#dial-call-id")
        await page.wait_for_selector(f"#call-id >> text={call_id}", timeout=WAIT_MS)
        await page.wait_for_selector("#call-fields [data-field=agent]", timeout=WAIT_MS)
        assert await page.text_content("#call-fields [data-field=to]") == "+15550100123"
        await fits(page)
        await sign_out(page)

        # A dialer sees the form and nothing else, and gets the id as text.
        await sign_in(page, gw.url, "dee")
        for panel in ("#calls-panel", "#history-panel", "#agents-panel", "#providers-panel"):
            assert await page.is_hidden(panel), panel
        await page.fill("#dial-to", "+15550100124")
        await page.fill("#dial-from", CALLER_ID)
        await page.fill("#dial-agent", "desk")
        await page.click("#dial-button")
        await page.wait_for_selector("#dial-result.ok span#dial-call-id", timeout=WAIT_MS)
        await fits(page)
    assert not [p for p in problems if "401" not in p and "400" not in p and "422" not in p], (
        problems
    )

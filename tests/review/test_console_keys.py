"""The console's Keys panel in a real browser (Debian's chromium through playwright): an
admin sees each key kind with its age and the days until rotation is due, the same figures
as the ``voicegw_key_*`` metrics; nothing breaks the strict CSP (no console errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.records.base import Role
from tests.console.harness import WAIT_MS, browser, console_gateway, watch_console
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.sessions.harness import PASSWORD

pytestmark = pytest.mark.e2e


async def test_admin_sees_key_ages_and_rotation_due(tmp_path: Path, rest: FakeCarrierRest) -> None:
    problems: list[str] = []
    async with console_gateway(tmp_path, rest, Role.ADMIN) as gw, browser(tmp_path) as context:
        page = await context.new_page()
        watch_console(page, problems)
        await page.goto(gw.url + "/console/")
        await page.fill("#username", "ada")
        await page.fill("#password", PASSWORD)
        await page.click("#login-button")
        await page.wait_for_selector("body[data-state=signed-in]", timeout=WAIT_MS)
        await page.wait_for_selector("#keys tr[data-kind=signing]", timeout=WAIT_MS)
        assert await page.is_visible("#keys-panel")
        rows = await page.eval_on_selector_all(
            "#keys tbody tr",
            "rows => rows.map(r => [r.dataset.kind, ...[...r.cells].map(c => c.textContent)])",
        )
        by_kind = {row[0]: row[1:] for row in rows}
        assert set(by_kind) == {"signing", "data"}
        kind, key_id, age, due, active, retired = by_kind["signing"]
        assert kind == "signing" and key_id and float(age) < 1 and 89 < float(due) <= 90
        assert (active, retired) == ("1", "0")
        due_cell = page.locator("#keys tr[data-kind=signing] td").nth(3)
        assert await due_cell.get_attribute("class") == "key-ok"
    assert not [p for p in problems if "401" not in p], problems  # 401: signed-out probes

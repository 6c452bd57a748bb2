"""The console in a real browser: sign-in, a message's timeline, a campaign's live
progress, and a reply from the sandbox phone that opens the WhatsApp window."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.browser.conftest import CHROMIUM

pytestmark = pytest.mark.e2e


def api(stack: Any) -> httpx.Client:
    return httpx.Client(
        base_url=stack.info["api"],
        timeout=10,
        headers={"Authorization": f"Bearer {stack.info['api_key']}"},
    )


def test_sign_in_and_out(playwright_browser: Any, stack: Any, shots: Any) -> None:
    base = stack.info["api"]
    context = playwright_browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{base}/console/messages")
    assert page.url.startswith(f"{base}/console/login")
    page.get_by_label("API key").fill("hk_wrong")
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.get_by_role("alert").inner_text()
    shots.take(page, "refused")
    page.get_by_label("API key").fill(stack.info["api_key"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/console/messages")  # back where the visitor was going
    cookie = next(c for c in context.cookies() if c["name"] == "herald_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
    page.get_by_role("link", name="Overview").click()
    page.wait_for_url(f"{base}/console/")
    page.get_by_role("heading", name="Overview").wait_for()
    shots.take(page, "overview")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/console/login$"))
    page.goto(f"{base}/console/")
    assert "/console/login" in page.url
    context.close()


def test_message_timeline(page: Any, stack: Any, shots: Any) -> None:
    with api(stack) as client:
        sent = client.post(
            "/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": "Order ready"}
        ).json()
    base = stack.info["api"]
    page.goto(f"{base}/console/messages?channel=sms")
    shots.take(page, "log")
    page.get_by_role("link", name=sent["id"]).click()
    page.wait_for_url(f"{base}/console/messages/{sent['id']}")
    timeline = page.locator("#timeline")
    # The sandbox calls back sent then delivered; the timeline follows without a reload.
    timeline.locator("[data-status=delivered]").wait_for()
    text = timeline.inner_text()
    assert "queued" in text and "delivered" in text and re.search(r"SM[0-9a-f]{32}", text)
    assert "twilio" in text  # the source of the callbacks
    shots.take(page, "delivered")


def test_campaign_live_progress(page: Any, stack: Any, shots: Any) -> None:
    recipients = [{"to": f"+1202555016{i}"} for i in range(8)]
    with api(stack) as client:
        campaign = client.post(
            "/v1/campaigns",
            json={
                "name": "Browser test",
                "channel": "sms",
                "body": "Sale!",
                "rate": 2,
                "recipients": recipients,
            },
        ).json()
    page.goto(f"{stack.info['api']}/console/campaigns/{campaign['id']}")
    page.evaluate("window.__notReloaded = true")
    done = page.locator("#campaign-done")
    first = int(done.get_attribute("data-done"))
    assert first < 8
    page.wait_for_function(
        "() => { const n = +document.querySelector('#campaign-done').dataset.done;"
        " return n > 0 && n < 8; }"
    )
    shots.take(page, "running")
    page.wait_for_function("() => document.querySelector('#campaign-done').dataset.done === '8'")
    assert page.evaluate("window.__notReloaded") is True  # counts moved in place
    assert page.locator("#campaign-progress").get_attribute("value") == "1.0"
    assert page.locator("#campaign-live svg rect").count() >= 2  # sends per second drawn
    page.locator("#campaign-live").get_by_text("rate 2/s").wait_for()
    shots.take(page, "done")


def test_sandbox_reply_opens_the_window(page: Any, stack: Any, shots: Any) -> None:
    number = "+12025550177"
    whatsapp = {"to": number, "channel": "whatsapp", "body": "Thanks for writing!"}
    with api(stack) as client:
        refused = client.post("/v1/messages", json=whatsapp)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "window_closed"
    base = stack.info["api"]
    page.get_by_role("link", name="Sandbox phone").click()
    page.get_by_label("Open the phone of a number").fill(number)
    page.get_by_role("button", name="Open").click()
    page.wait_for_url(re.compile(r".*/console/phone/.*"))
    window = page.locator("#window-state")
    assert "closed" in window.inner_text()
    page.get_by_label(f"Reply as {number}").fill("Hi, is my order ready?")
    page.get_by_role("button", name="Send reply").click()
    page.locator(".bubble.them").get_by_text("Hi, is my order ready?").wait_for()
    page.locator("#window-state .badge.ok").wait_for()
    with api(stack) as client:
        accepted = client.post("/v1/messages", json=whatsapp)
    assert accepted.status_code == 202, accepted.text
    # Herald's answer appears in the thread and its ticks reach "read" (the sandbox reads it).
    page.locator(".bubble.us .tick.t-read").wait_for()
    shots.take(page, "desktop")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    shots.take(page, "phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Send image").click()
    page.locator(".bubble.them .media").wait_for()
    page.get_by_role("button", name="Send STOP").click()
    page.locator(".bubble.them").get_by_text("STOP", exact=True).wait_for()
    page.locator("#window-state .badge.bad").get_by_text("opted out").wait_for()
    shots.take(page, "stop")
    page.goto(f"{base}/console/contacts?q=2025550177")
    row = page.locator("tbody").inner_text()
    assert "open" in row and "opted out" in row
    shots.take(page, "contacts")
    page.get_by_role("button", name=f"Opt {number} back in").click()
    page.locator("tbody .badge.ok").get_by_text("subscribed").wait_for()
    page.goto(f"{base}/console/")
    shots.take(page, "overview")


def test_chromium_is_debians(playwright_browser: Any) -> None:
    """The browser driven is the system one, not a Playwright download."""
    assert CHROMIUM.startswith("/usr/")
    assert playwright_browser.version


def test_usage_panel(page: Any, stack: Any, shots: Any) -> None:
    with api(stack) as client:
        client.post(
            "/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": "Usage"}
        ).raise_for_status()
        figures = client.get("/v1/usage?group_by=channel").json()
    sms = next(g for g in figures["data"] if g["channel"] == "sms")
    base = stack.info["api"]
    page.goto(f"{base}/console/")
    page.get_by_role("link", name="Usage").click()
    page.wait_for_url(re.compile(r".*/console/usage$"))
    page.get_by_role("heading", name="Usage").wait_for()
    for box in ("provider", "category"):  # ticked by default: keep channel alone
        page.get_by_label(box, exact=True).uncheck()
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*group_by=channel$"))
    row = page.get_by_role("table", name="Usage").locator("tbody tr", has_text="sms")
    assert row.locator("td").nth(1).inner_text() == str(sms["messages"])
    shots.take(page, "usage")

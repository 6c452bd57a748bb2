"""What a new user saw wrong in the console, checked in a real browser, with a
screenshot of every page at desktop and phone width (tests/browser/screenshots/):
the phone thread opens at its newest message and stays there as it refreshes, a wide
table scrolls inside its card instead of widening the page, the Usage form's boxes sit
beside their labels, an inbound image opens, each sender is listed once, a favicon."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

NUMBER = "+12025550178"


def _api(stack: Any) -> httpx.Client:
    return httpx.Client(
        base_url=stack.info["api"],
        timeout=10,
        headers={"Authorization": f"Bearer {stack.info['api_key']}"},
    )


def _at_end(page: Any) -> bool:
    return bool(
        page.evaluate(
            "(() => { const c = document.querySelector('#thread .chat');"
            " return c.scrollHeight - c.scrollTop - c.clientHeight < 40; })()"
        )
    )


def test_the_phone_thread_stays_at_its_newest_message(page: Any, stack: Any, shots: Any) -> None:
    base = stack.info["api"]
    page.goto(f"{base}/console/phone/{NUMBER}")
    box = page.get_by_label(f"Reply as {NUMBER}")
    for n in range(14):  # more than the thread's height
        box.fill(f"Message number {n}")
        page.get_by_role("button", name="Send reply").click()
        page.locator(".bubble.them").get_by_text(f"Message number {n}", exact=True).wait_for()
    page.reload()
    page.locator(".bubble.them").first.wait_for()
    assert _at_end(page), "the thread opened at its oldest message"
    # Two refreshes later it is still at the end.
    for _ in range(2):
        with page.expect_response(re.compile(r".*/thread")):
            pass
        page.wait_for_timeout(300)  # htmx swaps, then settles
    assert _at_end(page), "the refresh scrolled the thread back to the top"
    # A reader who scrolled up keeps their place through a refresh.
    page.evaluate("document.querySelector('#thread .chat').scrollTop = 0")
    with page.expect_response(re.compile(r".*/thread")):
        pass
    page.wait_for_timeout(200)
    assert page.evaluate("document.querySelector('#thread .chat').scrollTop") == 0
    # An image the customer sends opens (the sandbox hosts it, as the provider would).
    page.get_by_role("button", name="Send image").click()
    link = page.locator(".bubble.them a.media").last
    link.wait_for()
    assert link.inner_text().strip() == "image"
    href = link.get_attribute("href")
    answer = page.request.get(f"{base}{href}")
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    assert answer.body()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _at_end(page)
    shots.take(page, "thread")


def test_every_page_at_desktop_and_phone_width(page: Any, stack: Any, shots: Any) -> None:
    base = stack.info["api"]
    with _api(stack) as client:
        message = client.post(
            "/v1/messages",
            json={"to": "+12025550143", "channel": "sms", "body": "A long enough body " * 4},
        ).json()
        campaign = client.post(
            "/v1/campaigns",
            json={
                "name": "Looks",
                "channel": "sms",
                "body": "Offer",
                "rate": 5,
                "recipients": [{"to": "+12025550143"}, {"to": "+12025550144"}],
            },
        ).json()
    pages = {
        "overview": "/console/",
        "messages": "/console/messages",
        "message": f"/console/messages/{message['id']}",
        "campaigns": "/console/campaigns",
        "campaign": f"/console/campaigns/{campaign['id']}",
        "contacts": "/console/contacts",
        "usage": "/console/usage",
        "phone": f"/console/phone/{NUMBER}",
    }
    for width, height, label in ((1280, 900, "desktop"), (390, 844, "phone")):
        page.set_viewport_size({"width": width, "height": height})
        for name, path in pages.items():
            page.goto(f"{base}{path}")
            page.locator("h1").first.wait_for()
            overflow = page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= width, f"{name} is {overflow} px wide at {width} px"
            shots.take(page, f"{name}-{label}")
    page.set_viewport_size({"width": 1280, "height": 900})
    # The favicon is linked and served.
    page.goto(f"{base}/console/")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(f"{base}{icon}").status == 200
    # Each sender is listed once.
    senders = page.locator("section", has_text="Senders and quotas").locator(
        "tbody tr td:first-child"
    )
    names = [t.strip() for t in senders.all_inner_texts()]
    assert names and len(names) == len(set(names)), names


def test_the_usage_form_lines_up(page: Any, stack: Any) -> None:
    page.goto(f"{stack.info['api']}/console/usage")
    for name in ("channel", "provider", "status"):
        box = page.get_by_label(name, exact=True).bounding_box()
        text = page.locator("fieldset label", has_text=name).first.bounding_box()
        assert box and text
        middle = box["y"] + box["height"] / 2
        assert text["y"] <= middle <= text["y"] + text["height"], (name, box, text)
        assert box["width"] < 40, (name, box)  # a box, not a stretched field
    button = page.get_by_role("button", name="Show").bounding_box()
    assert button and button["width"] < 200, button

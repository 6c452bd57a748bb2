"""/docs in a real browser: Swagger UI, served from the installed package (no internet
here), renders every operation of /openapi.json without a script error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server


@pytest.fixture
def api_url() -> Iterator[str]:
    """The Flask app on a loopback port: /docs needs no worker, Redis or database."""
    from api import create_app

    server = make_server("127.0.0.1", 0, create_app({"TESTING": True}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_docs_render_every_operation(playwright_browser: Any, api_url: str, shots: Any) -> None:
    context = playwright_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(api_url) else None)
    page.goto(f"{api_url}/docs")
    page.locator(".opblock").first.wait_for()
    document = page.request.get(f"{api_url}/openapi.json").json()
    operations = sum(
        1 for item in document["paths"].values() for method in item if method != "parameters"
    )
    assert page.locator(".opblock").count() == operations
    assert page.get_by_text("Herald", exact=False).first.is_visible()
    send = page.locator(".opblock-post").filter(
        has=page.locator(".opblock-summary-path[data-path='/v1/messages']")
    )
    send.locator(".opblock-summary").click()
    send.get_by_text("Idempotency-Key").first.wait_for()
    send.get_by_text("Schema").first.click()  # the request body's model, from marshmallow
    shots.take(page, "reference")
    context.close()
    assert not errors, f"errors in the browser console: {errors}"
    assert not [u for u in outside if not u.startswith("data:")], outside

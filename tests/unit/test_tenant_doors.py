"""One tenant cannot hurt or watch another through the API's and console's doors: a
tenant's expensive reads have a rate of their own (429 beyond it, its neighbours
unaffected), the console shows no other tenant's traffic, and every answer carries
`nosniff` (the fast paths' too) and the console a CSP that pins `<base>` and forms."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from core.config import ConfigError, get_settings, load_settings
from tests.conftest import make_tenant
from tests.unit.test_console import sign_in
from tests.unit.test_status_fast_path import _seen_by_flask, _signed
from tests.unit.test_webhooks import new_message

NOSNIFF = ("X-Content-Type-Options", "nosniff")


# ---------------------------------------------------------------- nosniff and the CSP


def test_every_answer_says_nosniff(app, client, auth, tenant, dispatched) -> None:
    seen = _seen_by_flask(app)
    mid = new_message(client, auth, channel="sms")  # POST /v1/messages: the fast path
    path, body, headers = _signed(mid, "SM" + uuid.uuid4().hex, "sent")
    status = client.post(
        path, data=body, headers=headers, content_type="application/x-www-form-urlencoded"
    )
    assert status.status_code == 204 and seen == []  # the status fast path answered
    assert status.headers.get(NOSNIFF[0]) == NOSNIFF[1]
    accepted = client.post("/v1/messages", json={"to": "+12025550143", "body": "x"}, headers=auth)
    assert accepted.status_code == 202
    answers = [
        accepted,
        client.get("/healthz"),
        client.get("/v1/messages", headers=auth),
        client.get("/v1/messages/msg_nope", headers=auth),  # a JSON error
        client.get("/v1/messages"),  # 401
        client.get("/no/such/route"),
        client.get(
            "/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=<b>"
        ),
        client.get("/openapi.json"),
        client.get("/console/login"),
    ]
    for resp in answers:
        assert resp.headers.get(NOSNIFF[0]) == NOSNIFF[1], (resp.request.path, resp.status)


def test_console_csp_pins_base_forms_and_framing(client) -> None:
    csp = client.get("/console/login").headers["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["base-uri"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]


# ---------------------------------------------------------------- the console's overview


def test_overview_shows_only_the_tenants_own_waiting_messages(app, dispatched) -> None:
    from services.policy.limits import get_redis

    busy, quiet = make_tenant("busy"), make_tenant("quiet")
    client = app.test_client()
    busy_auth = {"Authorization": f"Bearer {busy['api_key']}"}
    for _ in range(3):
        new_message(client, busy_auth, channel="sms")
    redis = get_redis()
    queue = get_settings().queue_prefix + "herald.send"
    if redis is not None:  # the busy tenant's doorbells, waiting in the shared queue
        redis.rpush(queue, *[b"busy-task"] * 7)
    try:
        viewer = app.test_client()
        assert sign_in(viewer, quiet["api_key"]).status_code == 302
        page = viewer.get("/console/").get_data(as_text=True)
        mine = app.test_client()
        assert sign_in(mine, busy["api_key"]).status_code == 302
        own = mine.get("/console/").get_data(as_text=True)
    finally:
        if redis is not None:
            redis.delete(queue)
    for text in (page, own):
        assert "herald.send" not in text and "all tenants" not in text
    assert _waiting(page, "queued") == 0
    assert _waiting(own, "queued") == 3


def _waiting(page: str, status: str) -> int:
    section = page.split("<h2>Waiting", 1)[1].split("</section>", 1)[0]
    cell = section.split(f">{status}</a></td>", 1)[1]
    return int(cell.split('<td class="num">', 1)[1].split("<", 1)[0])


# ---------------------------------------------------------------- the read rate


@pytest.fixture
def read_rate(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """One expensive read per second per tenant, five at once."""
    monkeypatch.setenv("HERALD_READ_RATE", "1")
    get_settings.cache_clear()
    yield 1.0
    monkeypatch.delenv("HERALD_READ_RATE")
    get_settings.cache_clear()


def _until_limited(client, path: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    """Reads `path` until refused: (reads answered, the refusal)."""
    for answered in range(40):
        resp = client.get(path, headers=headers)
        if resp.status_code == 429:
            return answered, resp
        assert resp.status_code == 200, resp.get_data(as_text=True)
    pytest.fail(f"{path} was never limited")


@pytest.mark.parametrize("path", ["/v1/messages?limit=200", "/v1/usage?group_by=status"])
def test_a_tenants_reads_are_limited_and_its_neighbours_are_not(
    app, read_rate, path, dispatched
) -> None:
    greedy, neighbour = make_tenant("greedy"), make_tenant("neighbour")
    client = app.test_client()
    greedy_auth = {"Authorization": f"Bearer {greedy['api_key']}"}
    answered, refused = _until_limited(client, path, greedy_auth)
    assert answered >= 5  # the burst: five seconds' worth
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    neighbour_auth = {"Authorization": f"Bearer {neighbour['api_key']}"}
    assert client.get(path, headers=neighbour_auth).status_code == 200
    # Sending is not a read: the greedy tenant still sends.
    assert new_message(client, greedy_auth, channel="sms")


def test_campaign_progress_and_console_pages_share_the_tenants_read_rate(
    app, read_rate, dispatched
) -> None:
    tenant = make_tenant("poller")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "c",
            "channel": "sms",
            "body": "hi",
            "recipients": [{"to": "+12025550143"}],
        },
        headers=auth,
    )
    assert created.status_code == 201, created.get_json()
    _until_limited(client, f"/v1/campaigns/{created.get_json()['id']}", auth)
    console = app.test_client()
    assert sign_in(console, tenant["api_key"]).status_code == 302
    for page in ("/console/", "/console/messages", "/console/usage", "/console/campaigns"):
        resp = console.get(page)
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1, page
    assert console.get("/console/contacts?q=x").status_code == 429


def test_the_read_rate_setting() -> None:
    assert load_settings({}).read_rate == 10.0
    assert load_settings({"HERALD_READ_RATE": "0"}).read_rate == 0.0
    for bad in ("-1", "fast", "nan", "inf"):
        with pytest.raises(ConfigError, match="HERALD_READ_RATE"):
            load_settings({"HERALD_READ_RATE": bad})

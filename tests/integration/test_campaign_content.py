"""A campaign's content is stored once, on the campaign, and its messages reach the
provider exactly as a single message with the same content does (the sandbox records
what it received); rows written before migration 0015, which carry their own copy,
are sent from it as before."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from models import Campaign, Message, session_scope, utcnow
from services.campaigns.campaigns import release_due_campaigns
from services.messages.delivery import deliver
from tests.conftest import make_tenant

CAMPAIGN_TO, SINGLE_TO = "+12025550143", "+15005550011"
# Everything of a request that names the recipient or the message, not the content.
PER_MESSAGE = {"to", "biz_opaque_callback_data", "To", "StatusCallback"}


def bearer(tenant: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def content_of(live, message_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    sends = live.sends(herald_id=message_id)
    assert sends, f"the sandbox received nothing for {message_id}"
    return {k: v for k, v in sends[-1]["request"].items() if k not in PER_MESSAGE}


def campaign_row(client, tenant, **fields: Any) -> Message:  # type: ignore[no-untyped-def]
    created = client.post(
        "/v1/campaigns",
        headers=bearer(tenant),
        json={"name": "same", "rate": 100, **fields},
    )
    assert created.status_code == 201, created.get_json()
    release_due_campaigns(utcnow() + timedelta(seconds=5))
    with session_scope() as session:
        return session.scalars(
            select(Message).where(Message.campaign_id == created.get_json()["id"])
        ).one()


def single(client, tenant, **fields: Any) -> str:  # type: ignore[no-untyped-def]
    sent = client.post("/v1/messages", headers=bearer(tenant), json={"to": SINGLE_TO, **fields})
    assert sent.status_code == 202, sent.get_json()
    return sent.get_json()["id"]


def test_a_campaign_template_message_is_the_request_a_single_message_makes(
    live, client, dispatched
) -> None:
    tenant = make_tenant("same-meta")
    template = {
        "name": "order_ready",
        "language": "en_US",
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "Order 42"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
            {
                "type": "button",
                "sub_type": "url",
                "index": "0",
                "parameters": [{"type": "text", "text": "track/42"}],
            },
        ],
    }
    row = campaign_row(
        client,
        tenant,
        channel="whatsapp",
        provider="meta",
        template={"name": "offer", "language": "es_MX"},
        recipients=[{"to": CAMPAIGN_TO, "variables": ["Ana", "20%"]}],
    )
    # The row keeps what differs per recipient; the template is the campaign's.
    assert (row.template, row.body, row.media_urls) == ({"variables": ["Ana", "20%"]}, None, None)
    deliver(row.id)
    one = single(
        client,
        tenant,
        channel="whatsapp",
        provider="meta",
        template={"name": "offer", "language": "es_MX", "variables": ["Ana", "20%"]},
    )
    deliver(one)
    assert content_of(live, row.id) == content_of(live, one)
    assert content_of(live, row.id)["template"]["components"] == [
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "20%"}],
        }
    ]

    with_components = campaign_row(
        client,
        tenant,
        channel="whatsapp",
        provider="meta",
        template=template,
        recipients=[{"to": CAMPAIGN_TO}],
    )
    assert with_components.template is None  # no variables of its own
    deliver(with_components.id)
    other = single(client, tenant, channel="whatsapp", provider="meta", template=template)
    deliver(other)
    assert content_of(live, with_components.id) == content_of(live, other)
    assert content_of(live, other)["template"]["components"] == template["components"]


def test_a_campaign_sms_is_the_request_a_single_sms_makes(live, client, dispatched) -> None:
    tenant = make_tenant("same-sms")
    row = campaign_row(
        client,
        tenant,
        channel="sms",
        provider="twilio",
        body="Your table is ready",
        media_url="https://example.com/menu.jpg",
        recipients=[{"to": CAMPAIGN_TO}],
    )
    assert (row.body, row.media_urls, row.template) == (None, None, None)
    deliver(row.id)
    one = single(
        client,
        tenant,
        channel="sms",
        provider="twilio",
        body="Your table is ready",
        media_url="https://example.com/menu.jpg",
    )
    deliver(one)
    assert content_of(live, row.id) == content_of(live, one)
    assert content_of(live, one)["Body"] == "Your table is ready"


def test_rows_written_before_0015_are_sent_from_their_own_copy(live, client, dispatched) -> None:
    tenant = make_tenant("legacy-rows")
    template = {"name": "offer", "language": "es_MX"}
    with session_scope() as session:
        from models import ProviderAccount

        account = session.scalars(
            select(ProviderAccount).where(
                ProviderAccount.tenant_id == tenant["tenant_id"], ProviderAccount.provider == "meta"
            )
        ).one()
        # As a campaign created before the migration left it: every row a full copy.
        campaign = Campaign(
            tenant_id=tenant["tenant_id"],
            name="old",
            channel="whatsapp",
            provider="meta",
            template=template,
            status="running",
            rate=Decimal(100),
            allowance=Decimal(0),
            invalid_rows=[],
            shared_content=False,
        )
        session.add(campaign)
        session.flush()
        row = Message(
            tenant_id=tenant["tenant_id"],
            channel="whatsapp",
            provider="meta",
            provider_account_id=account.id,
            to_number=CAMPAIGN_TO,
            template={**template, "variables": ["Ana", "20%"]},
            status="scheduled",
            campaign_id=campaign.id,
        )
        session.add(row)
        session.flush()
        row_id = row.id
    release_due_campaigns(utcnow() + timedelta(seconds=5))
    deliver(row_id)
    one = single(
        client,
        tenant,
        channel="whatsapp",
        provider="meta",
        template={**template, "variables": ["Ana", "20%"]},
    )
    deliver(one)
    assert content_of(live, row_id) == content_of(live, one)

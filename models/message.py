"""Messages, their status history, raw provider webhooks, and contacts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import Base, UTCDateTime, new_id, utcnow

AutoId = BigInteger()


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("provider", "provider_message_id", name="uq_messages_provider_id"),
        # Unauthenticated seed callers (origin 'legacy') have their own key space.
        UniqueConstraint("tenant_id", "origin", "idempotency_key", name="uq_messages_idempotency"),
        # A campaign sends once per recipient; NULL campaign ids are not constrained.
        UniqueConstraint("campaign_id", "to_number", name="uq_messages_campaign_to"),
        Index("ix_messages_tenant_id_id", "tenant_id", "id"),
        # A test key's list: test rows only (migration 0024_test_keys).
        Index("ix_messages_tenant_test_id", "tenant_id", "id", postgresql_where=text("test")),
        # Each list filter, newest first per tenant (migration 0017_flat_reads).
        Index("ix_messages_tenant_status_id", "tenant_id", "status", "id"),
        Index("ix_messages_tenant_to_id", "tenant_id", "to_number", "id"),
        Index(
            "ix_messages_tenant_from_id",
            "tenant_id",
            "from_number",
            "id",
            postgresql_where=text("from_number IS NOT NULL"),
        ),
        Index(
            "ix_messages_tenant_campaign_id",
            "tenant_id",
            "campaign_id",
            "id",
            postgresql_where=text("campaign_id IS NOT NULL"),
        ),
        # What the periodic passes read: each as small as what waits.
        Index(
            "ix_messages_campaign_waiting",
            "campaign_id",
            "id",
            postgresql_where=text("status = 'scheduled'"),
        ),
        Index(
            "ix_messages_campaign_sent_at",
            "campaign_id",
            "sent_at",
            postgresql_where=text("campaign_id IS NOT NULL"),
        ),
        Index(
            "ix_messages_scheduled_due",
            "send_at",
            postgresql_where=text("status = 'scheduled' AND send_at IS NOT NULL"),
        ),
        Index(
            "ix_messages_queued_updated", "updated_at", postgresql_where=text("status = 'queued'")
        ),
        Index(
            "ix_messages_twilio_unsettled",
            "created_at",
            postgresql_where=text(
                "provider = 'twilio' AND direction = 'outbound' AND provider_message_id IS NOT NULL"
                " AND status IN ('sending', 'sent')"
            ),
        ),
        Index(
            "ix_messages_twilio_unpriced",
            "created_at",
            postgresql_where=text(
                "provider = 'twilio' AND direction = 'outbound' AND provider_message_id IS NOT NULL"
                " AND status IN ('delivered', 'read', 'undelivered')"
                " AND price IS NULL AND price_unit IS NULL"
            ),
        ),
        Index("ix_messages_status_lease", "status", "lease_until"),
        # Parked rows only (throttled or held): the release each second reads this.
        Index(
            "ix_messages_not_before",
            "not_before",
            postgresql_where=text("not_before IS NOT NULL"),
        ),
        # Rows still to send only, by pair and acceptance order: the gate's ordering probe
        # (migration 0022_pair_order).
        Index(
            "ix_messages_pair_waiting",
            "provider_account_id",
            "to_number",
            "seq",
            postgresql_where=text("direction = 'outbound' AND status IN ('queued', 'sending')"),
        ),
        # WhatsApp messages whose fallback is not settled yet: what the failover sweep
        # reads (services/messages/failover.py, migration 0026_failover).
        Index(
            "ix_messages_failover_pending",
            "failover_at",
            postgresql_where=text("failover_pending"),
        ),
        # A message has at most one fallback, whatever crashes or retries.
        UniqueConstraint("failover_of", name="uq_messages_failover_of"),
        # Rows still waiting with a ttl only: what the expiry sweep reads, not every
        # message ever sent with one.
        Index(
            "ix_messages_expires_waiting",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL AND status IN ('scheduled', 'queued')"),
        ),
        # A person's messages by contact or BSUID, for an erasure: only the rows that name
        # one (migration 0028_erasure_reads).
        Index(
            "ix_messages_tenant_contact",
            "tenant_id",
            "contact_id",
            postgresql_where=text("contact_id IS NOT NULL"),
        ),
        Index(
            "ix_messages_tenant_wa_user",
            "tenant_id",
            "wa_user_id",
            postgresql_where=text("wa_user_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("msg"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    direction: Mapped[str] = mapped_column(String(8), default="outbound")
    channel: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    provider_account_id: Mapped[str | None] = mapped_column(ForeignKey("provider_accounts.id"))
    # A phone number (E.164), or on WhatsApp a business-scoped user id (BSUID).
    to_number: Mapped[str] = mapped_column(String(160))
    from_number: Mapped[str | None] = mapped_column(String(160))
    contact_id: Mapped[str | None] = mapped_column(String(128))  # the contact's own id
    body: Mapped[str | None] = mapped_column(Text)
    media_urls: Mapped[list | None] = mapped_column(JSON)
    template: Mapped[dict | None] = mapped_column(JSON)
    options: Mapped[dict | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    provider_error_code: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A `queued` row parked until then (sender budget, hold): released by the beat.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The sender-budget slot for this send was reserved when it was parked.
    slot_reserved: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    campaign_id: Mapped[str | None] = mapped_column(String(32))
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # 'legacy': created by an unauthenticated call to a seed route; 'api': any other.
    origin: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    request_hash: Mapped[str | None] = mapped_column(String(64))
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 5))
    price_unit: Mapped[str | None] = mapped_column(String(8))
    # The recipient's WhatsApp id as Meta answered it (E.164 form), when it differs from
    # `to_number` (Brazil's ninth digit, Mexico's 521, Argentina's 549).
    wa_id: Mapped[str | None] = mapped_column(String(32))
    # The WhatsApp user's business-scoped user id (BSUID) and username, where Meta gave
    # them (send answer, status or inbound webhook; migration 0025_bsuid).
    wa_user_id: Mapped[str | None] = mapped_column(String(160))
    wa_username: Mapped[str | None] = mapped_column(String(64))
    # ttl: past this, a message still waiting in Herald fails `expired`
    # (services/messages/expiry.py).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Meta's `pricing.category` and `pricing.billable` from status webhooks
    # (services/reporting/usage.py).
    pricing_category: Mapped[str | None] = mapped_column(String(32))
    billable: Mapped[bool | None] = mapped_column(Boolean)
    # A campaign row's time zone key for quiet hours (services/policy/quiet_hours.py).
    recipient_zones: Mapped[str | None] = mapped_column(Text)
    # Acceptance order, one sequence for every process (migration 0022_pair_order): the
    # gate sends a pair's messages in this order. NULL on rows older than the column.
    seq: Mapped[int | None] = mapped_column(
        BigInteger, server_default=text("nextval('messages_seq')"), nullable=True
    )
    # Accepted with a test key: sent to the simulator, never to a provider, counted
    # apart and never priced (services/messages/simulation.py).
    test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Channel failover (services/messages/failover.py): on a WhatsApp message that asked
    # for an SMS fallback, `failover_pending` until its outcome is settled and
    # `failover_at` the deadline (None: a failure alone triggers it); `failover_id` its
    # fallback. On the fallback, `failover_of` the message it stands in for (unique).
    failover_pending: Mapped[bool | None] = mapped_column(Boolean)
    failover_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failover_of: Mapped[str | None] = mapped_column(String(32))
    failover_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # No foreign key from the events (migration 0023_event_fks): the join is declared.
    events: Mapped[list[MessageEvent]] = relationship(
        back_populates="message",
        order_by="MessageEvent.id",
        primaryjoin="Message.id == foreign(MessageEvent.message_id)",
    )


def update_message(session: Session, message_id: str, *where: Any, **values: Any) -> int:
    """UPDATE one message by id (and `where`), leaving the session's loaded objects as
    they are (the caller holds what it needs); how many rows it changed (0 or 1)."""
    return session.execute(
        update(Message)
        .where(Message.id == message_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount


class MessageEvent(Base):
    """One entry of a message's history: every callback is kept, applied or not."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    # The message's id, without a foreign key: see migration 0023_event_fks.
    message_id: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))
    native_status: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    applied: Mapped[bool] = mapped_column(Boolean, default=True)
    error_code: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    message: Mapped[Message] = relationship(
        back_populates="events", primaryjoin="foreign(MessageEvent.message_id) == Message.id"
    )


class WebhookEvent(Base):
    """A provider webhook item, kept raw. `dedup_key` is unique, so two API
    processes receiving the same callback at once record (and apply) it once; it
    names the provider account the receipt is scoped to (`twilio:<account id>:…`)."""

    __tablename__ = "webhook_events"
    # Operators list and count the `unrouted` kind (`herald inbound unrouted`, /metrics).
    __table_args__ = (
        Index("ix_webhook_events_kind_id", "kind", "id"),
        # A tenant's receipts past its retention (services/lifecycle/, migration 0019).
        Index("ix_webhook_events_tenant_received", "tenant_id", "received_at"),
        # Receipts tied to no message (unrouted, orphan statuses, account webhooks): the only
        # ones an erasure reads by their text (migration 0028_erasure_reads).
        Index(
            "ix_webhook_events_unmatched",
            "tenant_id",
            postgresql_where=text("message_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(32), index=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "phone", name="uq_contacts_tenant_phone"),
        UniqueConstraint("tenant_id", "external_id", name="uq_contacts_tenant_external"),
        Index("ix_contacts_tenant_wa_id", "tenant_id", "wa_id"),
        # A person by BSUID (migration 0025_bsuid).
        Index(
            "ix_contacts_tenant_wa_user_id",
            "tenant_id",
            "wa_user_id",
            unique=True,
            postgresql_where=text("wa_user_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("con"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(128))
    # None: a WhatsApp user known only by BSUID (a username, no phone number shared).
    phone: Mapped[str | None] = mapped_column(String(32))
    # The WhatsApp id (E.164 form) this person writes from and Meta answers for `phone`:
    # inbound `from` is matched to it, so the window and opt-out follow the person.
    wa_id: Mapped[str | None] = mapped_column(String(32))
    # Meta's business-scoped user id (BSUID) of this person and their username: a person
    # is one contact whichever of phone, WhatsApp id or BSUID a webhook names.
    wa_user_id: Mapped[str | None] = mapped_column(String(160))
    wa_username: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class EventDelivery(Base):
    """An event owed to a tenant's callback URL (an outbox row): written in the same
    transaction as the status change, so no change is lost between commit and send."""

    __tablename__ = "event_deliveries"
    __table_args__ = (Index("ix_event_deliveries_pending", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32), index=True)  # no foreign key: 0023
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Campaign(Base):
    """Many messages released in throttled batches by beat (see services/campaigns/campaigns.py)."""

    __tablename__ = "campaigns"
    # GET /v1/campaigns: a tenant's page in id order (migration 0021_edges).
    __table_args__ = (Index("ix_campaigns_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("cmp"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    body: Mapped[str | None] = mapped_column(Text)
    media_urls: Mapped[list | None] = mapped_column(JSON)
    template: Mapped[dict | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # running|paused|canceled|completed
    rate: Mapped[float] = mapped_column(Numeric(10, 3))
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    allowance: Mapped[float] = mapped_column(Numeric(12, 3), default=0)
    last_release_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    total: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    invalid_rows: Mapped[list | None] = mapped_column(JSON)
    # The content's `options` (a `media_id` resolved at creation): copied to each row
    # of a campaign written before 0015, read from here for the others.
    options: Mapped[dict | None] = mapped_column(JSON)
    # {"start": "21:00", "end": "08:00", "default_timezone": "UTC", "zones": [...]}
    quiet_hours: Mapped[dict | None] = mapped_column(JSON)
    # The content (body, media_urls, template, options) is stored here once; each row
    # carries only what differs per recipient (services/messages/campaign_content.py).
    # False: a campaign written before 0015, whose rows carry their own copy.
    shared_content: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=text("false")
    )
    # Why a paused campaign is paused ('daily_quota': by itself, until `resume_at`;
    # None: by the tenant).
    pause_reason: Mapped[str | None] = mapped_column(String(32))
    # What it will cost, at creation: {"amount": "12.34", "currency": "USD"} from the
    # tenant's sms_prices (services/content/prices.py); None: no estimate.
    estimated_cost: Mapped[dict | None] = mapped_column(JSON)
    # Created with a test key: its rows are test messages (services/messages/simulation.py).
    test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    resume_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookInbox(Base):
    """A provider callback received and not yet applied (the ingest inbox): the API
    answers once this row is committed, an applier takes rows in batches and deletes
    them. `dedup_key` is unique, so a retry of a callback still waiting here is one
    row; after it is applied, `webhook_events` de-duplicates."""

    __tablename__ = "webhook_inbox"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    # The provider accounts whose secret signed it: what the callback may touch.
    accounts: Mapped[list] = mapped_column(JSON)
    # Herald's message id named by the callback (Twilio's `message_id` query), if any.
    ref: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A row that failed to apply waits (next_attempt_at) and is kept after MAX attempts.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)

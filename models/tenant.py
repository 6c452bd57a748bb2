"""Tenants, their API keys and their provider accounts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, new_id, utcnow


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200))
    default_whatsapp_provider: Mapped[str | None] = mapped_column(String(16))
    default_sms_provider: Mapped[str | None] = mapped_column(String(16))
    callback_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)
    hourly_limit: Mapped[int | None] = mapped_column(Integer)
    daily_limit: Mapped[int | None] = mapped_column(Integer)
    # SMS bodies: look-alike characters swapped for GSM-7 ones (services/content/segments.py),
    # and a cap on the segments one message may be billed as (None: none).
    smart_encoding: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    sms_max_segments: Mapped[int | None] = mapped_column(Integer)
    # The SMS pumping guard (services/policy/destinations.py): the ISO countries it may
    # text (None: those of its own numbers) and international SMS a day (None: default).
    sms_countries: Mapped[list | None] = mapped_column(JSON)
    international_daily_limit: Mapped[int | None] = mapped_column(Integer)
    # The operator's SMS prices per segment per country, for campaigns' cost estimates
    # ({"currency": "USD", "per_segment": {"US": "0.0079", "*": "0.05"}}; None: no estimate;
    # services/content/prices.py).
    sms_prices: Mapped[dict | None] = mapped_column(JSON)
    # Its own opt-out/opt-in/help words ({"stop": ["ARRET"], …}) and its answers to
    # keywords ({"stop": "…", "help": "…"}; '' sends none) (services/policy/keywords.py).
    keywords: Mapped[dict | None] = mapped_column(JSON)
    keyword_replies: Mapped[dict | None] = mapped_column(JSON)
    # The failover a WhatsApp message gets when its request names none
    # (services/messages/failover_policy.py): {"after_seconds": n} or {}; None: none.
    failover: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A disabled tenant's keys and tokens are refused; its rows are kept.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Days its messages' content is kept (NULL: the default; services/lifecycle/retention.py).
    retention_days: Mapped[int | None] = mapped_column(Integer)

    accounts: Mapped[list[ProviderAccount]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """Only a SHA-256 of the key is stored: a database leak yields no usable key."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    # 'live', or 'test': its messages go to the simulator, never to a provider
    # (services/messages/simulation.py).
    type: Mapped[str] = mapped_column(String(8), default="live", server_default="live")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ProviderAccount(Base):
    """A tenant's credentials for one provider.

    `external_id` is what the provider's webhooks carry (Twilio AccountSid, Meta
    phone_number_id), so a callback finds its account and verification secret.
    Non-secret settings (sender numbers, Messaging Service SID, WABA id) live in
    `settings`; tokens and app secrets only in `secrets_enc`, encrypted.
    """

    __tablename__ = "provider_accounts"
    __table_args__ = (
        Index("ix_provider_accounts_lookup", "provider", "external_id"),
        Index("ix_provider_accounts_verify_token", "verify_token_hash"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("acc"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    secrets_enc: Mapped[str] = mapped_column(Text)
    # HMAC of the Meta verify token in `secrets_enc` ('' if none; NULL: not computed yet),
    # so Meta's unauthenticated subscription check finds its account without decrypting
    # every account (kept in step by services/tenancy/tenants.py).
    verify_token_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tenant: Mapped[Tenant] = relationship(back_populates="accounts")

"""WhatsApp message templates as the provider last told Herald about them (sync or webhook)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, new_id, utcnow


class Template(Base):
    """One template (Meta: a name in one language; Twilio: one Content SID) of one
    provider account. A template gone at the provider is kept with `deleted_at` set,
    so messages that used it still name something."""

    __tablename__ = "templates"
    __table_args__ = (
        # Meta: one row per name and language; Twilio: per Content SID (friendly names
        # may repeat).
        Index(
            "uq_templates_account_name_language",
            "provider_account_id",
            "name",
            "language",
            unique=True,
            postgresql_where=text("content_sid IS NULL"),
        ),
        UniqueConstraint("provider_account_id", "content_sid", name="uq_templates_account_sid"),
        Index("ix_templates_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("tpl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    provider_account_id: Mapped[str] = mapped_column(
        ForeignKey("provider_accounts.id", ondelete="CASCADE")
    )
    provider: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(16))
    # Lower-case (approved, pending, rejected, paused, disabled, ...); the provider's own
    # word in `provider_status` (Meta `APPROVED`, Twilio `approved`, `unsubmitted`, ...).
    status: Mapped[str] = mapped_column(String(32))
    provider_status: Mapped[str | None] = mapped_column(String(64))
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    category: Mapped[str | None] = mapped_column(String(32))
    # What a send must fill: {"format": "positional"|"named", "count": n, "components":
    # {"header": {...}, "body": {...}, "buttons": [...]}} (see services/content/templates.py).
    variables: Mapped[dict] = mapped_column(JSON, default=dict)
    variable_count: Mapped[int] = mapped_column(Integer, default=0)
    components: Mapped[dict | list | None] = mapped_column(JSON)
    content_sid: Mapped[str | None] = mapped_column(String(34))
    provider_template_id: Mapped[str | None] = mapped_column(String(64))
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

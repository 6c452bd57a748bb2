"""A tenant's senders: the numbers, Messaging Services and WhatsApp phone number ids it
sends from, several per provider account (see services/tenancy/senders.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, new_id, utcnow


class Sender(Base):
    """One address a provider account sends from. Credentials stay on the account (one
    Twilio account owns many numbers, one Meta token many phone number ids); a sender
    names only the address, the channels it serves, its own rate and whether it is the
    tenant's default. An address belongs to one tenant: inbound to it routes there."""

    __tablename__ = "senders"
    __table_args__ = (UniqueConstraint("provider", "address", name="uq_senders_provider_address"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("snd"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    provider_account_id: Mapped[str] = mapped_column(
        ForeignKey("provider_accounts.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(16))
    # number (E.164) | messaging_service (MG…) | phone_number_id (Meta)
    kind: Mapped[str] = mapped_column(String(24))
    address: Mapped[str] = mapped_column(String(64))
    # The E.164 number recipients see (a number's own, a Meta phone number's display
    # number); None for a Messaging Service, which picks a number per message.
    number: Mapped[str | None] = mapped_column(String(32))
    channels: Mapped[list] = mapped_column(JSON, default=list)
    mps: Mapped[Decimal | None] = mapped_column(Numeric(10, 3))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str | None] = mapped_column(String(200))
    # Provider failover (services/policy/health.py): the senders of a channel with a
    # priority take new messages that name no sender, the lowest healthy one first.
    priority: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

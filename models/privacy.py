"""What survives a person's erasure: their opt-out, as a keyed hash."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class Suppression(Base):
    """A number this tenant must never message again (an erased person who had opted
    out), known only by an HMAC of the tenant id and the number
    (services/privacy/suppression.py): the row names nobody."""

    __tablename__ = "suppressions"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    number_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16), default="opted_out")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PrivacyKey(Base):
    """The key suppressions are hashed with: random, made once, encrypted at rest
    (services/tenancy/secrets.py re-encrypts it on rotation), so the hashes outlive
    any change of HERALD_SECRET_KEY."""

    __tablename__ = "privacy_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

"""A tenant's own rows, by id or all of one kind: the one rule every tenant-scoped
lookup follows, so that another tenant's id answers exactly like a missing one."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound
from models import ApiKey, Campaign, Media, Message, ProviderAccount, Sender

Owned = TypeVar("Owned", ApiKey, Campaign, Media, Message, ProviderAccount, Sender)
Listed = TypeVar("Listed", ProviderAccount, Sender)


def get_owned(
    session: Session, model: type[Owned], tenant_id: str, row_id: str, missing: str
) -> Owned:
    """The tenant's row `row_id`, else NotFound(`missing`): an id of another tenant's
    row is not told apart from one that does not exist."""
    row = session.scalars(
        select(model).where(model.id == row_id, model.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise NotFound(missing)
    return row


def list_owned(session: Session, model: type[Listed], tenant_id: str) -> list[Listed]:
    """All the tenant's rows of `model`, oldest first (id breaks ties: a stable order)."""
    return list(
        session.scalars(
            select(model).where(model.tenant_id == tenant_id).order_by(model.created_at, model.id)
        )
    )

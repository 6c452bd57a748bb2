"""Tables and sessions. Import models from here."""

from models.base import Base, new_id, utcnow
from models.db import get_engine, new_session, reset_engine, session_scope
from models.message import (
    Campaign,
    Contact,
    EventDelivery,
    Message,
    MessageEvent,
    WebhookEvent,
    WebhookInbox,
)
from models.tenant import ApiKey, ProviderAccount, Tenant

__all__ = [
    "ApiKey",
    "Base",
    "Campaign",
    "Contact",
    "EventDelivery",
    "Message",
    "MessageEvent",
    "ProviderAccount",
    "Tenant",
    "WebhookEvent",
    "WebhookInbox",
    "get_engine",
    "new_id",
    "new_session",
    "reset_engine",
    "session_scope",
    "utcnow",
]

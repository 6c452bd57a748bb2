"""Tables and sessions. Import models from here."""

from models.base import Base, new_id, utcnow
from models.db import get_engine, new_session, reset_engine, session_scope
from models.media import Media
from models.message import (
    Campaign,
    Contact,
    EventDelivery,
    Message,
    MessageEvent,
    WebhookEvent,
    WebhookInbox,
    update_message,
)
from models.privacy import PrivacyKey, Suppression
from models.sender import Sender
from models.template import Template
from models.tenant import ApiKey, ProviderAccount, Tenant

__all__ = [
    "ApiKey",
    "Base",
    "Campaign",
    "Contact",
    "EventDelivery",
    "Media",
    "Message",
    "MessageEvent",
    "PrivacyKey",
    "ProviderAccount",
    "Sender",
    "Suppression",
    "Template",
    "Tenant",
    "WebhookEvent",
    "WebhookInbox",
    "get_engine",
    "new_id",
    "new_session",
    "reset_engine",
    "session_scope",
    "update_message",
    "utcnow",
]

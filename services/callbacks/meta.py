"""Meta's webhooks: one signed delivery carries statuses, inbound messages, errors and
WABA-level changes for any number of phone numbers; each item is applied on its own."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Message, WebhookEvent, utcnow
from providers import error_name
from providers.meta import OPT_OUT as META_OPT_OUT
from services.callbacks.inbound import keep_unrouted, store_inbound
from services.callbacks.receipts import (
    apply_callback_status,
    dedup_key,
    record_once,
    sender_phone,
    short_text,
    signer_scope,
    status_receipt,
)
from services.callbacks.signatures import (
    MAX_ID_LENGTH,
    MetaSigner,
    account_changes,
    credentials,
    is_account_change,
    meta_change_value,
    meta_changes,
    meta_phone_id,
)
from services.content import templates
from services.content.conversations import inbound_extras, link_inbound
from services.content.media import inbound_media_options
from services.content.phones import is_bsuid
from services.reporting.usage import record_meta_pricing
from services.tenancy.tenants import (
    AccountCredentials,
    accounts_by_external_id,
)

log = logging.getLogger(__name__)

META_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


def _objects(value: Any) -> tuple[list[dict[str, Any]], int]:
    """The objects of a JSON list, and how many of its items were something else."""
    if not isinstance(value, list):
        return [], 0
    objects = [item for item in value if isinstance(item, dict)]
    return objects, len(value) - len(objects)


def handle_meta_payload(
    session: Session, payload: dict[str, Any], signer: MetaSigner
) -> dict[str, int]:
    """Apply every status and inbound message of every change of every entry, for the
    accounts the signer may touch: a body signed with one tenant's secret cannot touch
    another tenant's phone number. An inbound message for a phone number id that
    several tenants hold is kept unrouted. Items of a shape Meta never sends are
    counted as `invalid` and skipped."""
    counts = dict.fromkeys(
        (
            "statuses",
            "messages",
            "errors",
            "duplicates",
            "unknown",
            "unverified",
            "unrouted",
            "invalid",
            "system",
        ),
        0,
    )
    for entry, change in account_changes(payload):  # WABA-level: kept, answered 200
        key = "account" if record_account_change(session, entry, change, signer) else "duplicates"
        counts[key] = counts.get(key, 0) + 1
        if key == "account":  # template status updates: services/content/templates.py
            templates.handle_account_change(session, entry, change, signer)
    accounts_of: dict[str, list[AccountCredentials]] = {}
    for change in meta_changes(payload):
        if is_account_change(change):
            continue
        value = meta_change_value(change)
        phone_id = meta_phone_id(value)
        statuses, odd_statuses = _objects(value.get("statuses"))
        messages, odd_messages = _objects(value.get("messages"))
        counts["invalid"] += odd_statuses + odd_messages
        if phone_id not in accounts_of:
            accounts_of[phone_id] = (
                [
                    c
                    for c in map(credentials, accounts_by_external_id(session, "meta", phone_id))
                    if c is not None
                ]
                if phone_id
                else []
            )
            if any(c.external_id != phone_id for c in accounts_of[phone_id]):  # senders
                from services.tenancy.senders import as_phone_number

                accounts_of[phone_id] = as_phone_number(session, accounts_of[phone_id], phone_id)
        accounts = accounts_of[phone_id]
        if not accounts:
            counts["unknown"] += len(statuses) + len(messages)
            digest = hashlib.sha256(repr(value).encode("utf-8", "replace")).hexdigest()
            record_once(
                session,
                provider="meta",
                kind="orphan",
                dedup_key=dedup_key("meta", signer.scope, "orphan", digest),
                payload=value,
            )
            continue
        creds = [c for c in accounts if signer.may_touch(c)]
        if not creds:
            counts["unverified"] += len(statuses) + len(messages)
            log.warning("meta change for phone id %s not signed by its app secret", phone_id)
            continue
        change_errors, odd_errors = _objects(value.get("errors"))
        counts["invalid"] += odd_errors
        if change_errors:
            counts["errors"] += record_meta_errors(
                session, creds, change_errors, source="change", phone_id=phone_id
            )
        people = _people(value)
        for status in statuses:
            outcome = _meta_status(session, creds, status, people)
            counts[outcome] += 1
        tenants = {c.tenant_id for c in creds}
        for item in messages:
            if len(tenants) > 1:
                wamid = short_text(item.get("id"), MAX_ID_LENGTH)
                if wamid is None:
                    counts["invalid"] += 1
                    continue
                new = keep_unrouted(
                    session, "meta", signer_scope(creds), wamid, "ambiguous", phone_id, item
                )
                counts["unrouted" if new else "duplicates"] += 1
                continue
            if item.get("type") == "system":  # a number or BSUID change: no message
                outcome = _meta_system(session, creds[0], item)
            else:
                outcome = _meta_inbound(session, creds[0], item, _person_of(item, people))
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


class _Person(dict):  # type: ignore[type-arg]
    """What a change's `contacts[]` says of one WhatsApp user: `name`, `username`,
    `user_id` (BSUID), `wa_id` (absent for a username user who shares no number)."""


def _people(value: dict[str, Any]) -> list[_Person]:
    """The change's `contacts[]` (inbound messages; Meta's status webhooks carry them too)."""
    people = []
    for contact in _objects(value.get("contacts"))[0]:
        profile = contact.get("profile") if isinstance(contact.get("profile"), dict) else {}
        person = _Person()
        for key, raw in (
            ("wa_id", contact.get("wa_id")),
            ("user_id", contact.get("user_id")),
            ("name", profile.get("name")),
            ("username", profile.get("username")),
        ):
            if isinstance(raw, str) and raw and len(raw) <= 200:
                person[key] = raw
        if person.get("user_id") and not is_bsuid(person["user_id"]):
            del person["user_id"]
        people.append(person)
    return people


def _person_of(item: dict[str, Any], people: list[_Person], only: bool = True) -> _Person:
    """The `contacts[]` entry of one message or status: by its sender's (or recipient's)
    WhatsApp id or BSUID, else (`only`: inbound) the only one. A status never takes the
    only entry on trust: a `failed` one carries neither `recipient_user_id` nor a
    contact, and a change batching it with another person's `delivered` would give it
    that person's BSUID, joining two people into one contact."""
    keys = {
        item.get(k)
        for k in ("from", "from_user_id", "recipient_id", "recipient_user_id")
        if isinstance(item.get(k), str)
    }
    for person in people:
        if keys & {person.get("wa_id"), person.get("user_id")} - {None}:
            return person
    return people[0] if only and len(people) == 1 else _Person()


def _ts(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return utcnow()


def _meta_status(
    session: Session,
    accounts: list[AccountCredentials],
    status: dict[str, Any],
    people: list[_Person] | None = None,
) -> str:
    """Apply one status item; returns which count it goes to."""
    wamid = short_text(status.get("id"), MAX_ID_LENGTH)
    native = status.get("status")
    if wamid is None or not isinstance(native, str) or len(native) > 32:
        return "invalid"
    herald_id = short_text(status.get("biz_opaque_callback_data"), 32)
    message, new = status_receipt(
        session,
        "meta",
        accounts,
        herald_id,
        wamid,
        native,
        status,
        # Kept without a message: applied when its wamid is recorded (meta_orphans.py).
        tenant_id=_only_tenant(accounts),
    )
    if not new:
        return "duplicates"
    if message is None:
        return "statuses"
    apply_meta_status(session, message, status, _person_of(status, people or [], only=False))
    return "statuses"


def _only_tenant(accounts: list[AccountCredentials]) -> str | None:
    tenants = {a.tenant_id for a in accounts}
    return tenants.pop() if len(tenants) == 1 else None


def apply_meta_status(
    session: Session,
    message: Message,
    status: dict[str, Any],
    person: dict[str, Any] | None = None,
) -> None:
    """Apply one Meta status item to its message. An opt-out code (131050) by webhook
    opts the contact out as the synchronous answer does; Meta's error details are kept.
    A status matches its message by wamid (or Herald's own id), so one naming the
    recipient by BSUID alone (`recipient_user_id`, no `recipient_id`) applies as any
    other; the BSUID and username it carries are kept on the message and its contact."""
    wamid = short_text(status.get("id"), MAX_ID_LENGTH) or ""
    native = status.get("status")
    mapped = META_STATUS.get(native) if isinstance(native, str) else None
    if mapped is None:
        return
    errors, _ = _objects(status.get("errors"))
    error = errors[0] if errors else {}
    code = error.get("code")
    code = str(code) if isinstance(code, int | str) and len(str(code)) <= 32 else None
    title = error.get("title") or error.get("message")
    detail = {k: status[k] for k in ("pricing", "conversation") if k in status} or None
    if isinstance(error.get("error_data"), dict):
        detail = {**(detail or {}), "error_data": error["error_data"]}
    # The BSUID and username first: the event out of this change shows them.
    user_id = status.get("recipient_user_id") or (person or {}).get("user_id")
    if isinstance(user_id, str) and is_bsuid(user_id):
        username = (person or {}).get("username")
        if user_id != message.wa_user_id or (username and username != message.wa_username):
            from services.policy.contacts import remember_user_id

            remember_user_id(session, message, user_id, username)
    apply_callback_status(
        session,
        message,
        mapped,
        provider_message_id=wamid,
        native_status=native,
        at=_ts(status.get("timestamp")),
        error_code=error_name("meta", code or ""),
        provider_code=code,
        error_message=title if isinstance(title, str) else None,
        detail=detail,
    )
    # Its category and billable flag (services/reporting/usage.py).
    record_meta_pricing(session, message.id, status)
    recipient = status.get("recipient_id")
    if (
        message.wa_id is None
        and isinstance(recipient, str)
        and recipient.isdigit()
        and len(recipient) <= 20
        and f"+{recipient}" != message.to_number
    ):  # the send answer that carried it may never have reached Herald
        from services.policy.contacts import remember_wa_id

        remember_wa_id(session, message, f"+{recipient}")
    if mapped == "failed" and code in {str(c) for c in META_OPT_OUT}:
        from services.policy.consent import mark_opted_out

        mark_opted_out(session, message.tenant_id, message.to_number)


def _sender_ids(item: dict[str, Any], person: dict[str, Any]) -> tuple[str | None, str | None]:
    """The sender's phone (E.164, from `from` / `wa_id`) and BSUID (`from_user_id` /
    `user_id`), each None when absent or malformed: a username user may share no number."""
    sender = item.get("from") or person.get("wa_id")
    phone = sender_phone(f"+{sender.lstrip('+')}") if isinstance(sender, str) else None
    user_id = item.get("from_user_id") or person.get("user_id")
    return phone, user_id if isinstance(user_id, str) and is_bsuid(user_id) else None


def _meta_inbound(
    session: Session, account: AccountCredentials, item: dict[str, Any], person: dict[str, Any]
) -> str:
    """Store one inbound message; returns which count it goes to. The sender is named by
    phone (`from`), BSUID (`from_user_id`), or both."""
    wamid = short_text(item.get("id"), MAX_ID_LENGTH)
    phone, user_id = _sender_ids(item, person)
    if wamid is None or (phone is None and user_id is None):
        return "invalid"
    kind = item.get("type", "text")
    content = item.get(kind) if isinstance(kind, str) else None
    content = content if isinstance(content, dict) else {}
    body = None
    media: list[str] = []
    if kind == "text":
        body = content.get("body")
    elif kind == "interactive":
        reply_type = content.get("type")
        reply = content.get(reply_type) if isinstance(reply_type, str) else None
        reply = reply if isinstance(reply, dict) else {}
        body = reply.get("title") or reply.get("id")
    elif kind == "button":
        body = content.get("text")
    else:
        body = content.get("caption")
        if isinstance(content.get("id"), str | int):
            media.append(f"meta-media:{content['id']}")
    errors, _ = _objects(item.get("errors"))  # e.g. 131051: a type the API cannot pass on
    code = errors[0].get("code") if errors else None
    title = errors[0].get("title") or errors[0].get("message") if errors else None
    stored = store_inbound(
        session,
        account,
        channel="whatsapp",
        provider_id=wamid,
        phone=phone,
        recipient=account.settings.get("display_phone_number") or account.external_id,
        body=body if isinstance(body, str) else None,
        media=media,
        options=inbound_media_options([content.get("mime_type")] if media else []),
        profile_name=person.get("name"),
        user_id=user_id,
        username=person.get("username"),
        at=_ts(item.get("timestamp")),
        detail=item,
        error=(
            (
                short_text(str(code), 32) if code is not None else "unknown",
                title[:500] if isinstance(title, str) else None,
            )
            if errors
            else None
        ),
    )
    if stored is not None:  # replies' context, reactions, locations… (conversations)
        link_inbound(session, stored, inbound_extras(item))
    if stored is not None and errors:
        record_meta_errors(
            session,
            [account],
            errors,
            source="inbound",
            phone_id=account.external_id,
            message_id=stored.id,
            provider_message_id=wamid,
        )
    return "messages" if stored is not None else "duplicates"


SYSTEM_KIND = "system"


def _meta_system(session: Session, account: AccountCredentials, item: dict[str, Any]) -> str:
    """A system message: the user changed their number (`user_changed_number`, which
    also gives a new BSUID) or only their BSUID changed (`user_changed_user_id`). The
    person's contact takes the new identity: moved, never a second contact. Kept once
    (a retried delivery changes nothing more); opens no window."""
    wamid = short_text(item.get("id"), MAX_ID_LENGTH)
    system = item.get("system") if isinstance(item.get("system"), dict) else {}
    kind = system.get("type")
    if wamid is None or kind not in ("user_changed_number", "user_changed_user_id"):
        return "invalid"
    receipt = record_once(
        session,
        provider="meta",
        kind=SYSTEM_KIND,
        dedup_key=dedup_key("meta", account.id, SYSTEM_KIND, wamid),
        tenant_id=account.tenant_id,
        provider_message_id=wamid,
        payload=item,
    )
    if receipt is None:
        return "duplicates"
    old_phone, from_user_id = _sender_ids(item, {})
    old_user_id = system.get("previous_user_id") or from_user_id
    old_user_id = old_user_id if isinstance(old_user_id, str) and is_bsuid(old_user_id) else None
    new_user_id = system.get("user_id")
    new_user_id = new_user_id if isinstance(new_user_id, str) and is_bsuid(new_user_id) else None
    new_wa_id = system.get("wa_id") or system.get("new_wa_id")
    new_phone = sender_phone(f"+{new_wa_id.lstrip('+')}") if isinstance(new_wa_id, str) else None
    from services.policy.consent import contact_for, person_for

    contact = person_for(session, account.tenant_id, phone=old_phone, user_id=old_user_id)
    if contact is None:  # a person this tenant never met: nothing to move
        return "system"
    if kind == "user_changed_number" and new_phone is not None and new_phone != contact.phone:
        holder = contact_for(session, account.tenant_id, new_phone)
        if holder is not None and holder is not contact:
            log.warning("number change to a number another contact holds: kept apart")
        else:
            contact.phone, contact.wa_id = new_phone, new_phone
    if new_user_id is not None and new_user_id != contact.wa_user_id:
        holder = contact_for(session, account.tenant_id, new_user_id)
        if holder is None:
            contact.wa_user_id = new_user_id
        elif holder is not contact and holder.phone is None:
            from services.policy.consent import fold_contacts

            fold_contacts(session, contact, holder).wa_user_id = new_user_id
    log.info("meta %s applied to contact %s", kind, contact.id)
    return "system"


ERROR_KIND = "error"


def record_meta_errors(
    session: Session,
    accounts: list[AccountCredentials],
    errors: list[dict[str, Any]],
    *,
    source: str,
    phone_id: str,
    message_id: str | None = None,
    provider_message_id: str | None = None,
) -> int:
    """Keep errors Meta reports outside a status (`value.errors` of a change, `errors`
    of an inbound message) as `webhook_events` of kind `error`, for operators (logged,
    counted in /metrics). A retried delivery is recorded once. Returns how many were new."""
    new = 0
    for error in errors:
        digest = hashlib.sha256(
            json.dumps(
                [source, phone_id, provider_message_id, error], sort_keys=True, default=str
            ).encode()
        ).hexdigest()
        receipt = record_once(
            session,
            provider="meta",
            kind=ERROR_KIND,
            dedup_key=dedup_key("meta", signer_scope(accounts), ERROR_KIND, digest),
            tenant_id=_only_tenant(accounts),
            message_id=message_id,
            provider_message_id=provider_message_id,
            payload={"source": source, "phone_number_id": phone_id, "error": error},
        )
        if receipt is not None:
            new += 1
            log.warning(
                "meta webhook error source=%s phone_id=%s code=%s title=%s",
                source,
                phone_id,
                short_text(str(error.get("code")), 32),
                short_text(str(error.get("title") or error.get("message")), 200),
            )
    return new


def count_webhook_errors(session: Session) -> int:
    """Provider errors recorded from webhooks outside any status (see record_meta_errors)."""
    return (
        session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.kind == ERROR_KIND)
        )
        or 0
    )


ACCOUNT_KIND = "account"  # a WABA-level change's row in webhook_events


def record_account_change(
    session: Session, entry: dict[str, Any], change: dict[str, Any], signer: Any
) -> bool:
    """Keep one WABA-level change, deduplicated under its signer; returns whether new."""
    field = str(change.get("field") or "")[:64]
    value = change.get("value")
    digest = hashlib.sha256(
        json.dumps([entry.get("id"), field, value], sort_keys=True, default=str).encode()
    ).hexdigest()
    tenants = {a.tenant_id for a in signer.accounts}
    receipt = record_once(
        session,
        provider="meta",
        kind=ACCOUNT_KIND,
        dedup_key=dedup_key("meta", signer.scope, "account", digest),
        tenant_id=tenants.pop() if len(tenants) == 1 and not signer.app_wide else None,
        payload={"waba_id": entry.get("id"), "field": field, "value": value},
    )
    if receipt is not None:
        log.info("meta account webhook recorded field=%s", field)
    return receipt is not None

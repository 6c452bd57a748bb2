"""`POST /v1/messages/batch`: up to 1,000 messages in one request, each with its own
outcome (created, replay, or its error), stored with the same statements as one."""

from __future__ import annotations

import logging
from typing import Any

from marshmallow import fields
from sqlalchemy.orm import Session

from core.errors import (
    HeraldError,
    InvalidRequest,
)
from core.shapes import ErrorBodyView, Shape
from models import Tenant
from services.messages.accept import Item, prepare, request_hash
from services.messages.group_commit import committer
from services.messages.serialize import MessageView

log = logging.getLogger(__name__)


def batch_entries(payload: Any) -> list[Any]:
    """The `messages` list of a batch body, or the 400/413 that says what is wrong with
    the envelope (what is wrong with one message is that message's own answer)."""
    from services.content.schemas import MAX_BATCH

    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(payload) - {"messages"})
    if unknown:
        raise InvalidRequest(
            "The request has invalid fields.",
            code="invalid_fields",
            fields={name: ["Unknown field."] for name in unknown},
        )
    entries = payload.get("messages")
    if not isinstance(entries, list) or not entries:
        raise InvalidRequest(
            "The request has invalid fields.",
            code="invalid_fields",
            fields={"messages": ["A non-empty list of messages is required."]},
        )
    if len(entries) > MAX_BATCH:
        raise HeraldError(
            f"A batch holds at most {MAX_BATCH} messages; this one has {len(entries)}.",
            code="batch_too_large",
            status=413,
        )
    return entries


class BatchErrorView(ErrorBodyView):
    class Meta:
        optional = ("fields", "retry_after")

    retry_after = fields.Integer(metadata={"description": "over quota: seconds to wait"})


class BatchEntryView(Shape):
    """One entry of a batch's answer (`item_answer`): its message, or its error."""

    class Meta:
        optional = ("message", "error")

    index = fields.Integer()
    status = fields.Integer(
        metadata={"description": "202 accepted, 200 replayed, else the error's"}
    )
    message = fields.Nested(MessageView)
    error = fields.Nested(BatchErrorView)


class BatchAnswerView(Shape):
    """`POST /v1/messages/batch` (`accept_batch`)."""

    data = fields.List(fields.Nested(BatchEntryView))
    accepted = fields.Integer()
    replayed = fields.Integer()
    failed = fields.Integer()


def item_answer(index: int, item: Item | HeraldError) -> dict[str, Any]:
    """One entry of a batch's answer: its index, its status, its message or its error."""
    if isinstance(item, HeraldError):
        error = item
    elif item.error is not None:
        error = item.error
    else:
        return {"index": index, "status": item.status, "message": item.answer()}
    body = error.to_dict()["error"]
    if "Retry-After" in error.headers:
        body["retry_after"] = int(error.headers["Retry-After"])
    return {"index": index, "status": error.status, "error": body}


def accept_batch(
    session: Session, tenant: Tenant, payload: Any, test: bool = False
) -> dict[str, Any]:
    """`POST /v1/messages/batch`: each entry validated and prepared on its own, then all
    stored by the group commit (one INSERT of the messages, one of their events, one
    COMMIT, published after it). The answer has one entry per message, in order.
    `test`: a test key's batch (every message a test one)."""
    from services.content.schemas import load_batch_item

    entries = batch_entries(payload)
    prepared: list[Item | HeraldError] = []
    for entry in entries:
        try:
            data = load_batch_item(entry)
            key = data.pop("idempotency_key", None)
            digest = None
            if key:
                digest = request_hash({k: v for k, v in entry.items() if k != "idempotency_key"})
            prepared.append(
                prepare(session, tenant, data, idempotency_key=key, digest=digest, test=test)
            )
        except HeraldError as exc:
            prepared.append(exc)
    items = [p for p in prepared if isinstance(p, Item)]
    if items:
        session.close()  # the connection goes back to the pool while the group commits
        committer().submit(items)
    answers = [item_answer(i, p) for i, p in enumerate(prepared)]
    counts = {"accepted": 0, "replayed": 0, "failed": 0}
    for answer in answers:
        status = answer["status"]
        counts["accepted" if status == 202 else "replayed" if status == 200 else "failed"] += 1
    created = [i.values["id"] for i in items if i.created and i.values]
    log.info(
        "batch accepted tenant=%s messages=%d accepted=%d replayed=%d failed=%d ids=%s..%s",
        tenant.id,
        len(answers),
        counts["accepted"],
        counts["replayed"],
        counts["failed"],
        min(created, default="-"),
        max(created, default="-"),
    )
    return {"data": answers, **counts}

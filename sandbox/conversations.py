"""Meta conversations in the sandbox: replies (`context`), reactions, locations, contact
cards, stickers, a document's `filename`, read receipts with the typing indicator, and
inbound messages of those kinds, in Meta's shapes.

Hooked into sandbox/meta_api.py (validation, the read receipt on the same
`POST /<phone_number_id>/messages`, the statuses of a reaction, inbound content) and
sandbox/control.py (`GET /_sandbox/reads`). As Meta: an unknown `context.message_id`
is accepted (the reply just shows no quote); a reaction to a message the business never
received is accepted, then fails by webhook with 131009, and a reaction is only ever
`sent` (never delivered or read); a read receipt for a wamid the number never received
is refused with 100.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from typing import Any

import emoji as emoji_lib

from sandbox.graph import graph_error
from sandbox.state import SandboxState, new_graph_id

MAX_CONTACTS = 257
LOCATION_KEYS = ("latitude", "longitude", "name", "address", "url")


class Book:
    """What the sandbox remembers for conversations: the inbound wamids each phone
    number received, and every read receipt asked for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inbound: dict[str, set[str]] = {}
        self.reads: list[dict[str, Any]] = []


def book(state: SandboxState) -> Book:
    return state.part("conversations", Book)


def remember_inbound(state: SandboxState, phone_number_id: str, wamid: str) -> None:
    b = book(state)
    with b.lock:
        b.inbound.setdefault(phone_number_id, set()).add(wamid)


def received(state: SandboxState, phone_number_id: str, wamid: Any) -> bool:
    b = book(state)
    with b.lock:
        return isinstance(wamid, str) and wamid in b.inbound.get(phone_number_id, set())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def payload_problem(payload: dict[str, Any]) -> tuple[int, str] | None:
    """What Meta refuses at once in a message of these kinds (after the generic checks
    of meta_api.validate): (code, message), or None."""
    context = payload.get("context")
    if context is not None and not (
        isinstance(context, dict) and isinstance(context.get("message_id"), str)
    ):
        return 100, "(#100) Param context['message_id'] must be a string."
    kind = payload.get("type", "text")
    obj = payload.get(kind)
    if kind == "reaction":
        emoji = obj.get("emoji")
        if not isinstance(emoji, str) or not isinstance(obj.get("message_id"), str):
            return 100, "(#100) Param reaction['emoji'] and reaction['message_id'] are strings."
        if emoji and not emoji_lib.is_emoji(emoji):
            return 131009, "(#131009) Parameter value is not valid: reaction['emoji'] is no emoji."
        if context is not None:
            return 100, "(#100) A reaction message takes no context."
    elif kind == "location":
        for key, limit in (("latitude", 90), ("longitude", 180)):
            value = obj.get(key)
            if not _number(value) or not -limit <= value <= limit:
                return 100, f"(#100) Param location['{key}'] must be a number within ±{limit}."
        for key in ("name", "address"):
            if key in obj and not isinstance(obj[key], str):
                return 100, f"(#100) Param location['{key}'] must be a string."
    elif kind == "contacts":
        cards = payload.get("contacts")
        if len(cards) > MAX_CONTACTS:
            return 100, f"(#100) Param contacts must have at most {MAX_CONTACTS} elements."
        for n, card in enumerate(cards):
            name = card.get("name") if isinstance(card, dict) else None
            if not isinstance(name, dict) or not name.get("formatted_name"):
                return 131008, (
                    f"(#131008) The parameter contacts[{n}]['name']['formatted_name'] is required."
                )
    elif kind == "sticker" and "caption" in obj:
        return 100, "(#100) Param sticker['caption'] is not allowed: a sticker has no caption."
    elif kind == "document" and "filename" in obj and not isinstance(obj["filename"], str):
        return 100, "(#100) Param document['filename'] must be a string."
    if kind != "document" and isinstance(obj, dict) and "filename" in obj:
        return 100, f"(#100) Param {kind}['filename'] is not allowed."
    return None


def plan(
    state: SandboxState,
    phone_number_id: str,
    payload: dict[str, Any],
    statuses: list[str],
    code: int,
) -> tuple[list[str], int]:
    """The statuses a message of these kinds gets: a reaction only `sent`, or `failed`
    with 131009 when it reacts to a message this number never received."""
    if payload.get("type") != "reaction" or statuses == ["failed"]:
        return statuses, code
    target = (payload.get("reaction") or {}).get("message_id")
    if not received(state, phone_number_id, target):
        return ["failed"], 131009
    return ["sent"], code


def read_receipt(
    state: SandboxState, phone_number_id: str, payload: dict[str, Any]
) -> tuple[dict, int]:
    """`{"messaging_product": "whatsapp", "status": "read", "message_id": <wamid>,
    "typing_indicator"?: {"type": "text"}}`: `{"success": true}`, or Meta's error
    (code, message) for a bad shape or a wamid this number never received."""
    problem: tuple[int, str] | None = None
    if payload.get("messaging_product") != "whatsapp":
        problem = 100, "(#100) Param messaging_product must be one of {WHATSAPP}."
    elif payload.get("status") != "read":
        problem = 100, f'(#100) Param status must be one of {{READ}} - got "{payload["status"]}".'
    elif not isinstance(payload.get("message_id"), str) or not payload["message_id"]:
        problem = 131008, "(#131008) The parameter message_id is required."
    elif "typing_indicator" in payload and payload["typing_indicator"] != {"type": "text"}:
        problem = 100, "(#100) Param typing_indicator['type'] must be one of {TEXT}."
    elif not received(state, phone_number_id, payload["message_id"]):
        problem = (
            100,
            ("(#100) Invalid parameter: message_id is not a message this phone number received."),
        )
    entry = {
        "at": time.time(),
        "account": phone_number_id,
        "message_id": payload.get("message_id"),
        "typing": "typing_indicator" in payload,
        "ok": problem is None,
    }
    b = book(state)
    with b.lock:
        b.reads.append(entry)
    if problem is not None:
        body, status = graph_error(problem[0], message=problem[1])
        entry["error_code"] = problem[0]
        return body, status
    return {"success": True}, 200


def clear_reads(state: SandboxState) -> None:
    """On reset: forget the read receipts (the numbers keep what they received)."""
    b = book(state)
    with b.lock:
        b.reads.clear()


def reads(state: SandboxState, message_id: str | None = None) -> list[dict[str, Any]]:
    b = book(state)
    with b.lock:
        return [r for r in b.reads if message_id is None or r["message_id"] == message_id]


def inbound_message(data: dict[str, Any], message: dict[str, Any]) -> bool:
    """Fill an inbound `messages[]` item from the control API's `reaction`, `location`,
    `contacts` or `sticker` (Meta's webhook shapes); False when `data` has none."""
    if isinstance(data.get("reaction"), dict):
        reaction = {"message_id": str(data["reaction"].get("message_id") or "")}
        if data["reaction"].get("emoji"):  # a removed reaction comes without emoji
            reaction["emoji"] = str(data["reaction"]["emoji"])
        message.update(type="reaction", reaction=reaction)
    elif isinstance(data.get("location"), dict):
        location = data["location"]
        message.update(
            type="location",
            location={k: v for k, v in location.items() if k in LOCATION_KEYS},
        )
    elif isinstance(data.get("contacts"), list):
        message.update(type="contacts", contacts=data["contacts"])
    elif data.get("sticker"):
        animated = isinstance(data["sticker"], dict) and bool(data["sticker"].get("animated"))
        message.update(
            type="sticker",
            sticker={
                "mime_type": "image/webp",
                "sha256": base64.b64encode(
                    hashlib.sha256(secrets.token_bytes(8)).digest()
                ).decode(),
                "id": new_graph_id(),
                "animated": animated,
            },
        )
    else:
        return False
    return True

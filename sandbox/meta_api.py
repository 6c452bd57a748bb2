"""The subset of Meta's WhatsApp Cloud API (Graph API) that Herald uses: sends, read
receipts, and the webhooks they and inbound messages cause (error shapes: sandbox/graph.py)."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from flask import Blueprint, Response, request

from sandbox import conversations, templates, users
from sandbox.callbacks import BatchedStatus, Callback, meta_callback, plan_statuses
from sandbox.common import Send
from sandbox.graph import (
    ERRORS,
    Refusal,
    caller,
    graph_error,
    graph_fail,
    graph_json,
    no_object,
    webhook_error,
)
from sandbox.media import inbound_meta_media, send_problem
from sandbox.state import (
    Fault,
    MetaAccount,
    SandboxState,
    digits,
    new_wamid,
)

MESSAGE_TYPES = (
    "audio",
    "contacts",
    "document",
    "image",
    "interactive",
    "location",
    "reaction",
    "sticker",
    "template",
    "text",
    "video",
)
MEDIA_TYPES = ("audio", "document", "image", "sticker", "video")
INTERACTIVE_TYPES = (
    "button",
    "list",
    "cta_url",
    "flow",
    "product",
    "product_list",
    "location_request_message",
    "call_permission_request",
)

MAGIC_FAILED = "15005550011"  # accepted, then a `failed` status with 131026
# Accepted, then a `failed` status webhook carrying the code (Meta reports these
# asynchronously). A range of the sandbox's own, apart from Twilio's test numbers.
MAGIC_ASYNC = {"12015550147": 131047, "12015550149": 131049, "12015550150": 131050}
# A phone that is off: accepted and `sent`, and nothing more until it comes back
# (POST /_sandbox/online), as Meta keeps a message for a phone that is unreachable
# (for up to 30 days) and reports `delivered` when it connects.
MAGIC_OFFLINE = "12015550160"
MAGIC_SYNC = {"15005550012": 131047, "15005550013": 131050, "15005550014": 131051}


def _missing(name: str) -> str:
    return f"(#100) The parameter {name} is required."


def validate(payload: Any) -> str | None:
    """Return a Graph-style `(#100) ...` message for the first problem, or None if valid."""
    if not isinstance(payload, dict):
        return "(#100) The request body must be a JSON object."
    product = payload.get("messaging_product")
    if product is None:
        return _missing("messaging_product")
    if product != "whatsapp":
        return f'(#100) Param messaging_product must be one of {{WHATSAPP}} - got "{product}".'
    if payload.get("recipient_type", "individual") != "individual":
        return "(#100) Param recipient_type must be one of {INDIVIDUAL}."
    to = payload.get("to")
    recipient = payload.get("recipient")
    if to in (None, "") and recipient in (None, ""):
        return _missing("to")
    if to in (None, ""):  # a BSUID (or parent BSUID) alone; with both, `to` wins
        if not isinstance(recipient, str) or not users.BSUID.fullmatch(recipient):
            return (
                "(#100) Param recipient must be a valid business-scoped user ID"
                f' - got "{recipient}".'
            )
    elif not isinstance(to, str) or not re.fullmatch(r"\+?\d{8,15}", to.replace(" ", "")):
        return f'(#100) Param to must be a valid phone number - got "{to}".'
    kind = payload.get("type", "text")
    if kind not in MESSAGE_TYPES:
        allowed = ", ".join(t.upper() for t in MESSAGE_TYPES)
        return f'(#100) Param type must be one of {{{allowed}}} - got "{kind}".'
    obj = payload.get(kind)
    if not isinstance(obj, dict) and kind != "contacts":
        return _missing(kind)
    if kind == "text":
        body = obj.get("body")
        if not isinstance(body, str) or not body:
            return _missing("text['body']")
        if len(body) > 4096:
            return "(#100) Param text['body'] must be at most 4096 characters long."
    elif kind in MEDIA_TYPES:
        if not (obj.get("id") or obj.get("link")):
            return f"(#100) Param {kind} must contain either 'id' or 'link'."
        if obj.get("link") and not re.match(r"https?://", str(obj["link"])):
            return f"(#100) Param {kind}['link'] must be a valid URL."
    elif kind == "template":
        if not obj.get("name"):
            return _missing("template['name']")
        if not isinstance(obj.get("language"), dict) or not obj["language"].get("code"):
            return _missing("template['language']['code']")
    elif kind == "interactive":
        if not obj.get("type"):
            return _missing("interactive['type']")
        if obj["type"] not in INTERACTIVE_TYPES:
            return f"(#100) Param interactive['type'] is not valid - got \"{obj['type']}\"."
        if not isinstance(obj.get("action"), dict):
            return _missing("interactive['action']")
    elif kind == "location":
        for key in ("latitude", "longitude"):
            if obj.get(key) is None:
                return _missing(f"location['{key}']")
    elif kind == "contacts":
        if not isinstance(obj, list) or not obj:
            return _missing("contacts")
    elif kind == "reaction":
        if not obj.get("message_id"):
            return _missing("reaction['message_id']")
        if "emoji" not in obj:
            return _missing("reaction['emoji']")
    return None


# Meta's supported media, by file ending: images JPEG/PNG only, stickers WebP only.
MEDIA_SUFFIXES = {"image": (".jpg", ".jpeg", ".png"), "sticker": (".webp",)}
KNOWN_MEDIA_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
CAPTION_LIMIT = 1024


def media_problem(payload: dict[str, Any]) -> tuple[int, str] | None:
    """What Meta refuses in a valid media message: a caption over 1,024 characters, or a
    linked file of a type the message type does not take (a GIF or WebP as `image`).
    Meta finds the second only when it fetches the link, and may report it by webhook;
    the sandbox answers it at once, as 131053, so a test cannot miss it."""
    kind = payload.get("type", "text")
    obj = payload.get(kind)
    if kind not in MEDIA_TYPES or not isinstance(obj, dict):
        return None
    caption = obj.get("caption")
    if isinstance(caption, str) and len(caption) > CAPTION_LIMIT:
        return (
            100,
            f"(#100) Param {kind}['caption'] must be at most {CAPTION_LIMIT} characters long.",
        )
    link = str(obj.get("link") or "").split("?", 1)[0].lower()
    suffix = link[link.rfind(".") :] if "." in link.rsplit("/", 1)[-1] else ""
    allowed = MEDIA_SUFFIXES.get(kind)
    if allowed and suffix in KNOWN_MEDIA_SUFFIXES and suffix not in allowed:
        mime = "image/" + {".jpg": "jpeg"}.get(suffix, suffix[1:])
        return 131053, f"(#131053) Media upload error: {mime} is not supported for {kind}."
    return None


def _summary_body(payload: dict[str, Any]) -> str | None:
    """A human-readable body for the send receipt, whatever the message type."""
    kind = payload.get("type", "text")
    obj = payload.get(kind)
    if not isinstance(obj, dict):
        return None
    if kind == "text":
        return obj.get("body")
    if kind in MEDIA_TYPES:
        return obj.get("caption") or obj.get("link") or obj.get("id")
    if kind == "template":
        return obj.get("name")
    if kind == "interactive":
        return (obj.get("body") or {}).get("text")
    if kind == "reaction":
        return obj.get("emoji")
    return None


def _category(payload: dict[str, Any]) -> str:
    """Pricing category: templates by name hint (default utility); free-form is service."""
    if payload.get("type") != "template":
        return "service"
    name = str(payload["template"]["name"]).lower()
    if any(k in name for k in ("otp", "auth", "verif", "code")):
        return "authentication"
    if any(k in name for k in ("promo", "marketing", "offer", "sale")):
        return "marketing"
    return "utility"


# Brazilian area codes where WhatsApp ids carry the ninth digit; elsewhere accounts
# mostly predate it and keep the 8-digit id.
BR_NINTH_DIGIT_AREAS = frozenset(
    {"11", "12", "13", "14", "15", "16", "17", "18", "19", "21", "22", "24", "27", "28"}
)


def wa_id_for(number: str) -> str:
    """The WhatsApp id Meta answers for a dialled number (bare digits): like production,
    not always the number itself. Brazil outside the ninth-digit areas: without the 9
    (55 92 98172-3241 -> 559281723241); Mexico: with the old mobile 1 (52 55... ->
    521 55...); Argentina: with the mobile 9 (54 11... -> 549 11...)."""
    if m := re.fullmatch(r"55(\d{2})9([6-9]\d{7})", number):
        if m[1] not in BR_NINTH_DIGIT_AREAS:
            return f"55{m[1]}{m[2]}"
    elif m := re.fullmatch(r"55(\d{2})([6-9]\d{7})", number):
        if m[1] in BR_NINTH_DIGIT_AREAS:
            return f"55{m[1]}9{m[2]}"
    elif m := re.fullmatch(r"52([2-9]\d{9})", number):
        return f"521{m[1]}"
    elif m := re.fullmatch(r"54([1-3]\d{9})", number):
        return f"549{m[1]}"
    return number


def _envelope(account: MetaAccount, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": account.waba_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": account.display_phone_number,
                                "phone_number_id": account.phone_number_id,
                            },
                            **value,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def status_payload(
    account: MetaAccount,
    wamid: str,
    wa_id: str,
    status: str,
    timestamp: float,
    category: str,
    biz_data: str | None,
    sent_at: float,
    error_code: int = 131026,
    user_id: str | None = None,
    to_user_id: bool = False,
) -> dict[str, Any]:
    """A `statuses` webhook. Like Meta, `read` carries no conversation/pricing, and
    `biz_opaque_callback_data` comes back on sent/delivered/read only, never on `failed`.
    The recipient: `recipient_user_id` (its BSUID) always, except on a `failed` status
    of a send to a phone number; `recipient_id` (the WhatsApp id) only when the user
    shares the number (`wa_id` empty: a username user hiding it)."""
    entry: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(timestamp))}
    if wa_id:
        entry["recipient_id"] = wa_id
    if user_id and (status != "failed" or to_user_id):
        entry["recipient_user_id"] = user_id
    if biz_data is not None and status in ("sent", "delivered", "read"):
        entry["biz_opaque_callback_data"] = biz_data
    if status in ("sent", "delivered"):
        person = wa_id or user_id
        conv_id = hashlib.md5(f"{account.phone_number_id}:{person}:{category}".encode()).hexdigest()
        conversation: dict[str, Any] = {"id": conv_id, "origin": {"type": category}}
        if status == "sent":
            conversation["expiration_timestamp"] = str(int(sent_at) + 86400)
        billable = category != "service"
        entry["conversation"] = conversation
        entry["pricing"] = {
            "billable": billable,
            "pricing_model": "PMP",
            "type": "regular" if billable else "free_customer_service",
            "category": category,
        }
    if status == "failed":
        entry["errors"] = [webhook_error(error_code)]
    return _envelope(account, {"statuses": [entry]})


def inbound_callback(state: SandboxState, data: dict[str, Any], url: str) -> Callback:
    """Build a signed `messages` webhook as if a WhatsApp user wrote to a business number."""
    with state.lock:
        phone_id = str(data.get("account") or data.get("to") or next(iter(state.meta_accounts)))
        account = state.meta_accounts.get(phone_id)
    if account is None:
        raise ValueError(f"unknown meta phone_number_id {phone_id!r}")
    if data.get("change_error") is not None:
        return _change_error_callback(account, data["change_error"], url)
    user = _inbound_user(state, account, data)
    wa_id = user.shown_phone  # None: a username user sharing no number
    wamid = new_wamid(wa_id or user.user_id)
    message: dict[str, Any] = {"id": wamid, "timestamp": str(int(time.time()))}
    if wa_id:
        message["from"] = wa_id
    message["from_user_id"] = user.user_id
    if data.get("context_message_id"):
        message["context"] = {
            "from": account.display_phone_number,
            "id": data["context_message_id"],
        }
    body = data.get("body")
    conversations.remember_inbound(state, account.phone_number_id, wamid)
    if conversations.inbound_message(data, message):
        pass  # a reaction, location, contacts or sticker (sandbox/conversations.py)
    elif data.get("unsupported"):
        # A type the Cloud API cannot pass on (a poll, an edit...): Meta says so in the
        # message's own `errors`, code 131051.
        message.update(
            type="unsupported",
            unsupported={"type": str(data["unsupported"])},
            errors=[
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."},
                }
            ],
        )
    elif data.get("interactive"):
        message.update(type="interactive", interactive=data["interactive"])
    elif data.get("button"):
        message.update(type="button", button=data["button"])
    elif data.get("media_url") or data.get("media_type"):
        mime = data.get("media_type") or "image/jpeg"
        major = mime.split("/")[0]
        kind = major if major in ("image", "video", "audio") else "document"
        kind = "sticker" if mime == "image/webp" else kind
        # Real media: its id can be retrieved and its bytes downloaded (sandbox/media.py).
        media: dict[str, Any] = inbound_meta_media(state, account.phone_number_id, data)
        if body and kind != "audio":
            media["caption"] = body
        message.update(type=kind, **{kind: media})
    else:
        message.update(type="text", text={"body": body or ""})
    contact = users.contact_entry(user)
    if data.get("profile_name"):
        contact["profile"]["name"] = data["profile_name"]
    payload = _envelope(account, {"contacts": [contact], "messages": [message]})
    return meta_callback(
        url,
        payload,
        account.app_secret,
        kind="inbound",
        event=message["type"],
        message_id=wamid,
        max_retries=0,
    )


def _inbound_user(state: SandboxState, account: MetaAccount, data: dict[str, Any]) -> users.User:
    """The writing user: by `from` (a phone number, reported by its WhatsApp id; a
    `username` and `hide_phone` given here are the user's from now on), or by
    `from_user_id` (the BSUID of a user the sandbox knows)."""
    if data.get("from_user_id") is not None:
        found = users.user_by_id(state, account.waba_id, str(data["from_user_id"]))
        if found is None:
            raise ValueError("'from_user_id' names no user of this WABA (POST /_sandbox/users)")
        return found
    wa_id = digits(data.get("from"))
    if not re.fullmatch(r"\d{8,15}", wa_id):
        raise ValueError("'from' must be a phone number (or give 'from_user_id')")
    wa_id = wa_id_for(wa_id)  # Meta reports the sender by its WhatsApp id
    if data.get("username") is not None or data.get("hide_phone") is not None:
        return users.register(state, account.waba_id, data, wa_id)
    return users.user_for_phone(state, account.waba_id, wa_id)


def identity_change_callback(state: SandboxState, data: dict[str, Any], url: str) -> Callback:
    """A `system` message as Meta sends one when a user's identity changes: `type`
    `user_changed_number` (`new_phone`; a new number also gets a new BSUID) or
    `user_changed_user_id` (only the BSUID changed: no phone number in it). The user is
    named by `user_id` (BSUID) or `phone`. System messages carry no `contacts[]`."""
    with state.lock:
        phone_id = str(data.get("account") or next(iter(state.meta_accounts)))
        account = state.meta_accounts.get(phone_id)
    if account is None:
        raise ValueError(f"unknown meta phone_number_id {phone_id!r}")
    kind = data.get("type")
    if kind not in ("user_changed_number", "user_changed_user_id"):
        raise ValueError("'type' must be 'user_changed_number' or 'user_changed_user_id'")
    if data.get("user_id") is not None:
        user = users.user_by_id(state, account.waba_id, str(data["user_id"]))
    elif data.get("phone") is not None:
        user = users.user_for_phone(state, account.waba_id, wa_id_for(digits(data["phone"])))
    else:
        raise ValueError("name the user by 'user_id' or 'phone'")
    if user is None:
        raise ValueError("'user_id' names no user of this WABA")
    shown_before = user.shown_phone
    if kind == "user_changed_number":
        new_wa_id = digits(data.get("new_phone"))
        if not re.fullmatch(r"\d{8,15}", new_wa_id):
            raise ValueError("'new_phone' must be a phone number")
        new_wa_id = wa_id_for(new_wa_id)
        old_id, _ = users.change_number(state, account.waba_id, user, new_wa_id)
        system: dict[str, Any] = {
            "body": f"User {user.name} changed from {shown_before} to {new_wa_id}",
            "wa_id": new_wa_id,
            "type": kind,
            "user_id": user.user_id,
            "previous_user_id": old_id,
        }
    else:
        old_id = users.change_user_id(state, account.waba_id, user)
        system = {
            "body": f"User {user.name} changed their business-scoped user ID",
            "type": kind,
            "user_id": user.user_id,
            "previous_user_id": old_id,
        }
    message: dict[str, Any] = {
        "id": new_wamid(shown_before or old_id),
        "timestamp": str(int(time.time())),
        "type": "system",
        "system": system,
    }
    if kind == "user_changed_number" and shown_before:
        message["from"] = shown_before
    message["from_user_id"] = old_id
    return meta_callback(
        url,
        _envelope(account, {"messages": [message]}),
        account.app_secret,
        kind="system",
        event=kind,
        message_id=message["id"],
        max_retries=0,
    )


def _change_error_callback(account: MetaAccount, code: Any, url: str) -> Callback:
    """A change that carries only `value.errors` (an account or app problem Meta reports
    outside any message status)."""
    try:
        error = webhook_error(int(code))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"change_error must be one of {sorted(ERRORS)}") from None
    return meta_callback(
        url,
        _envelope(account, {"errors": [error]}),
        account.app_secret,
        kind="error",
        event=str(code),
        message_id=None,
        max_retries=0,
    )


def blueprint(state: SandboxState) -> Blueprint:
    """Flask routes for `POST /<version>/<phone_number_id>/messages`, bound to `state`."""
    bp = Blueprint("meta", __name__)

    @bp.post("/<version>/<phone_number_id>/messages")
    def send_message(version: str, phone_number_id: str) -> Response:
        received_at = time.time()
        payload = request.get_json(silent=True)
        parsed = payload if isinstance(payload, dict) else {}
        receipt: dict[str, Any] = {
            "provider": "meta",
            "received_at": received_at,
            "account": phone_number_id,
            "herald_id": parsed.get("biz_opaque_callback_data"),
            "to": parsed.get("to") or parsed.get("recipient"),
            "from": phone_number_id,
            "channel": "whatsapp",
            "type": parsed.get("type", "text"),
            "body": _summary_body(parsed),
            "request": payload,
        }

        send = Send(state, receipt, _fault_error)

        def fail(code: int, status: int | None = None, **kw: Any) -> Response:
            return send.refuse(graph_fail(code, status, **kw), code)

        accounts = caller(state, version, f"/{version}/{phone_number_id}/messages")
        if isinstance(accounts, Refusal):
            return send.refuse(*accounts)
        account = accounts.get(phone_number_id)
        if account is None:
            return send.refuse(no_object(phone_number_id, "post"), 100)

        if isinstance(payload, dict) and "status" in payload:  # a read receipt
            body, status = conversations.read_receipt(state, phone_number_id, payload)
            return graph_json(body, status)

        gate = state.admit("meta", phone_number_id)
        state.sleep(gate.latency)
        if gate.retry_after is not None:
            return fail(130429)
        faulted = send.fault_first(gate.fault)
        if faulted is not None:
            return faulted

        problem = validate(payload)
        if problem is not None:
            return fail(100, message=problem)
        refused = media_problem(payload) or conversations.payload_problem(payload)
        if refused is not None:
            return fail(refused[0], message=refused[1])
        template_error = templates.meta_send_problem(state, account.waba_id, payload)
        if template_error is not None:  # only for a WABA with templates registered
            code, status, text, details = template_error
            return fail(code, status, message=text, details=details)
        unknown_media = send_problem(state, payload, phone_number_id)  # a media id it lacks
        if unknown_media is not None:
            return fail(100, message=unknown_media)
        to = payload.get("to")
        if to:
            dialled = digits(to.replace(" ", ""))
            wa_id = wa_id_for(dialled)
            user: users.User | None = users.user_for_phone(state, account.waba_id, wa_id)
            contact = {"input": to, "wa_id": wa_id}
        else:  # to a BSUID: the answer names it back, never the number
            to = payload["recipient"]
            user = users.user_by_id(state, account.waba_id, to)
            dialled = wa_id = (user.phone or "") if user is not None else ""
            contact = {"input": to, "user_id": to}
        kind = payload.get("type", "text")
        if "user_id" in contact and _category(payload) == "authentication":
            return fail(131062)  # Meta: authentication templates need a phone number
        magic = MAGIC_SYNC.get(dialled)
        if magic == 131047 and kind == "template":
            magic = None
        if magic is not None:
            return fail(magic)

        wamid = new_wamid(wa_id)
        receipt["provider_message_id"] = wamid
        message: dict[str, Any] = {"id": wamid}
        if kind == "template":
            message["message_status"] = "accepted"
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [contact],
            "messages": [message],
        }
        _schedule_statuses(state, account, payload, wamid, wa_id, time.time(), user)
        return send.accept(graph_json(answer, 200))

    return bp


def come_online(state: SandboxState, number: str) -> int:
    """The offline phone (`MAGIC_OFFLINE`) connects: the messages Meta held for it are
    `delivered` and `read` now. How many."""
    wa_id = "".join(c for c in number if c.isdigit())
    with state.lock:
        held = state.meta_offline.pop(wa_id, [])
    for account, payload, wamid in held:
        _schedule_statuses(
            state, account, payload, wamid, wa_id, time.time(), later=["delivered", "read"]
        )
    return len(held)


def _fault_error(fault: Fault) -> tuple[Response, int]:
    code = fault.code or {429: 130429, 503: 131016}.get(fault.status or 500, 131000)
    body, status = graph_error(code, status=fault.status, details=fault.message)
    return graph_json(body, status), code


def _schedule_statuses(
    state: SandboxState,
    account: MetaAccount,
    payload: dict[str, Any],
    wamid: str,
    wa_id: str,
    sent_at: float,
    user: users.User | None = None,
    later: list[str] | None = None,
) -> None:
    config = state.get_config()
    url = config["meta_webhook_url"]
    if not url:
        return
    delay = config["callback_delay"]
    error_code = MAGIC_ASYNC.get(wa_id, 131026)
    if error_code == 131047 and payload.get("type") == "template":
        error_code = 131026  # templates may open a conversation: only free-form fails
    # A BSUID no user of this WABA has: accepted, then failed as an unknown number is.
    failing = user is None or wa_id == MAGIC_FAILED
    failing = failing or (wa_id in MAGIC_ASYNC and error_code != 131026)
    statuses = ["failed"] if failing else ["sent", "delivered", "read"]
    statuses, error_code = conversations.plan(
        state, account.phone_number_id, payload, statuses, error_code
    )
    if later is not None:  # the phone came back: what it held back
        statuses = later
    elif wa_id == MAGIC_OFFLINE and statuses[-1] == "read":
        with state.lock:
            state.meta_offline.setdefault(wa_id, []).append((account, payload, wamid))
        statuses = ["sent"]
    timeline = [(delay * (i + 1), s) for i, s in enumerate(statuses)]
    category = _category(payload)
    biz = payload.get("biz_opaque_callback_data")
    cfg = config["callbacks"]
    happened_at = {s: sent_at + d for d, s in timeline}
    with state.lock:
        planned = plan_statuses(timeline, cfg, whatsapp=True, rng=state.rng)
    for when, status in planned:
        to_user_id = "to" not in payload or not payload["to"]
        shown = wa_id if user is None or not to_user_id else (user.shown_phone or "")
        body = status_payload(
            account,
            wamid,
            shown,
            status,
            happened_at[status],
            category,
            biz,
            sent_at,
            error_code,
            user_id=user.user_id if user is not None else payload.get("recipient"),
            to_user_id=to_user_id,
        )
        change = body["entry"][0]["changes"][0]["value"]
        item = BatchedStatus(
            waba_id=account.waba_id,
            metadata=change["metadata"],
            status=change["statuses"][0],
            message_id=wamid,
            herald_id=biz,
            # Like Meta: no `contacts[]` on `failed`; the username on delivered/read only.
            contact=users.contact_entry(
                user, with_username=status != "sent", dialled=not to_user_id
            )
            if user is not None and status != "failed"
            else None,
        )
        state.meta_batcher.add(
            url,
            account.app_secret,
            item,
            when,
            cfg["batch_window"],
            cfg["max_retries"],
            cfg["retry_backoff"],
        )

"""Media as Meta's Graph API and Twilio serve it: upload, retrieve, download, delete.

Meta: `POST /<version>/<phone_number_id>/media` (multipart `file`, `type`,
`messaging_product`) checks the type and size as the Cloud API does and answers `{"id"}`;
`GET /<version>/<media_id>` answers a download URL that needs the owning account's bearer
token and expires after `URL_TTL` seconds (Meta: 5 minutes); `DELETE` forgets the media.
A send naming an unknown media id is refused with (#100), as Meta does.

Twilio: an inbound message's `MediaUrl0` is
`/2010-04-01/Accounts/<sid>/Messages/<MM sid>/Media/<ME sid>`, which needs HTTP basic auth
and answers 307 to a signed storage URL (4 hours) that, like S3's, refuses a request that
also carries an Authorization header.

Inbound media injected through `POST /_sandbox/inbound` (`media_type`, and the bytes as
`media_base64` or `media_size` made-up bytes) are stored here with real ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import threading
import time
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, has_request_context, jsonify, request

from sandbox.graph import (
    Refusal,
    caller,
    graph_fail,
    graph_json,
    graph_token,
    no_object,
    token_accounts,
)
from sandbox.state import SandboxState, new_graph_id, new_twilio_sid
from sandbox.twilio_rest import BASE, basic_account, error_response, unauthorized

KB = 1024
MB = 1024 * 1024
URL_TTL = 300.0  # Meta's media URL: 5 minutes
TWILIO_URL_TTL = 4 * 3600.0  # Twilio's signed media URL: 4 hours
DEFAULT_SIZE = 2048
MAX_INJECTED = 256 * MB
# Cloud API "Supported media types": MIME type -> (message type, largest file).
TYPES: dict[str, tuple[str, int]] = {
    "audio/aac": ("audio", 16 * MB),
    "audio/amr": ("audio", 16 * MB),
    "audio/mpeg": ("audio", 16 * MB),
    "audio/mp4": ("audio", 16 * MB),
    "audio/ogg": ("audio", 16 * MB),
    "text/plain": ("document", 100 * MB),
    "application/pdf": ("document", 100 * MB),
    "application/vnd.ms-excel": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("document", 100 * MB),
    "application/msword": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (
        "document",
        100 * MB,
    ),
    "application/vnd.ms-powerpoint": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "document",
        100 * MB,
    ),
    "image/jpeg": ("image", 5 * MB),
    "image/png": ("image", 5 * MB),
    "image/webp": ("sticker", 500 * KB),
    "video/mp4": ("video", 16 * MB),
    "video/3gpp": ("video", 16 * MB),
    "video/3gp": ("video", 16 * MB),
}
STATIC_STICKER = 100 * KB
MEDIA_KINDS = ("audio", "document", "image", "sticker", "video")


@dataclass
class StoredMedia:
    id: str
    provider: str
    owner: str  # Meta phone_number_id or Twilio account SID
    mime_type: str
    data: bytes
    filename: str | None = None
    uploaded: bool = False  # through the upload API (else injected inbound)
    deleted: bool = False
    retrievals: int = 0  # GET /<media_id> (Meta) or the Media resource (Twilio)
    downloads: int = 0
    created_at: float = field(default_factory=time.time)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "owner": self.owner,
            "mime_type": self.mime_type,
            "size": len(self.data),
            "sha256": self.sha256,
            "filename": self.filename,
            "uploaded": self.uploaded,
            "deleted": self.deleted,
            "retrievals": self.retrievals,
            "downloads": self.downloads,
        }


class MediaStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, StoredMedia] = {}
        self.key = secrets.token_bytes(32)

    def add(self, item: StoredMedia) -> StoredMedia:
        with self.lock:
            self.items[item.id] = item
        return item

    def get(self, media_id: str) -> StoredMedia | None:
        with self.lock:
            item = self.items.get(media_id)
        return item if item is not None and not item.deleted else None

    def owned(self, media_id: str, provider: str, owners: Container[str]) -> StoredMedia | None:
        """The media `media_id` if it is `provider`'s and one of `owners` owns it."""
        item = self.get(media_id)
        if item is None or item.provider != provider or item.owner not in owners:
            return None
        return item

    def sign(self, media_id: str, expires: int) -> str:
        return hmac.new(self.key, f"{media_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def hand_out(self, item: StoredMedia, ttl: float) -> tuple[int, str]:
        """Count a retrieval of `item`; the expiry and signature of a download URL good for
        `ttl` seconds."""
        with self.lock:
            item.retrievals += 1
        expires = int(time.time() + ttl)
        return expires, self.sign(item.id, expires)

    def signed(self, media_id: str, expires: str, signature: str) -> StoredMedia | None:
        """The media a download URL names, unless it is unknown, its signature is not ours
        or it has expired."""
        item = self.get(media_id)
        if (
            item is None
            or not expires.isdigit()
            or not hmac.compare_digest(signature, self.sign(media_id, int(expires)))
            or int(expires) < time.time()
        ):
            return None
        return item

    def download(self, item: StoredMedia) -> Response:
        with self.lock:
            item.downloads += 1
        return Response(item.data, 200, content_type=item.mime_type)


def store(state: SandboxState) -> MediaStore:
    """The media of one sandbox (kept across resets, like accounts)."""
    return state.part("media", MediaStore)


def _base_url() -> str:
    return request.host_url if has_request_context() else "http://127.0.0.1/"


def injected_bytes(data: dict[str, Any], seed: str) -> bytes:
    """The bytes of injected media: `media_base64`, or `media_size` made-up bytes."""
    if data.get("media_base64") is not None:
        try:
            return base64.b64decode(str(data["media_base64"]), validate=True)
        except ValueError:
            raise ValueError("media_base64 must be base64") from None
    size = data.get("media_size", DEFAULT_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_INJECTED:
        raise ValueError(f"media_size must be an integer from 1 to {MAX_INJECTED}")
    return random.Random(seed).randbytes(size)


def inject(
    state: SandboxState, provider: str, owner: str, data: dict[str, Any], filename: str | None
) -> StoredMedia:
    """Store media injected through the control API (`media_type`, and `media_base64` or
    `media_size`), with an id of the provider's kind."""
    media_id = new_graph_id() if provider == "meta" else new_twilio_sid("ME")
    return store(state).add(
        StoredMedia(
            id=media_id,
            provider=provider,
            owner=owner,
            mime_type=str(data.get("media_type") or "image/jpeg"),
            data=injected_bytes(data, media_id),
            filename=filename,
        )
    )


def inbound_meta_media(state: SandboxState, phone_number_id: str, data: dict[str, Any]) -> dict:
    """Store the media of an injected inbound Meta message; its webhook object."""
    item = inject(state, "meta", phone_number_id, data, data.get("filename"))
    # The webhook's checksum is base64 of the SHA-256; GET /<media_id> answers it in hex.
    digest = base64.b64encode(hashlib.sha256(item.data).digest()).decode()
    return {"mime_type": item.mime_type, "sha256": digest, "id": item.id}


def inbound_twilio_media(
    state: SandboxState, account_sid: str, message_sid: str, data: dict[str, Any]
) -> str:
    """Store the media of an injected inbound Twilio message; its `MediaUrl0`."""
    media_sid = inject(state, "twilio", account_sid, data, None).id
    return (
        f"{_base_url()}2010-04-01/Accounts/{account_sid}/Messages/{message_sid}/Media/{media_sid}"
    )


def send_problem(state: SandboxState, payload: Any, phone_number_id: str) -> str | None:
    """Meta's (#100) for a send naming a media id this number cannot use (unknown,
    deleted, or another number's), as a message or a template header."""
    if not isinstance(payload, dict):
        return None
    kind = payload.get("type", "text")
    ids: list[tuple[str, Any]] = []
    obj = payload.get(kind)
    if kind in MEDIA_KINDS and isinstance(obj, dict) and obj.get("id") is not None:
        ids.append((f"{kind}['id']", obj["id"]))
    if kind == "template" and isinstance(obj, dict):
        for component in obj.get("components") or []:
            for parameter in (component or {}).get("parameters") or []:
                if not isinstance(parameter, dict):
                    continue
                inner = parameter.get(parameter.get("type"))
                if isinstance(inner, dict) and inner.get("id") is not None:
                    ids.append((f"{parameter.get('type')}['id']", inner["id"]))
    media = store(state)
    for name, media_id in ids:
        if media.owned(str(media_id), "meta", (phone_number_id,)) is None:
            return (
                f"(#100) Param {name} is not a valid whatsapp business account media attachment ID"
            )
    return None


def _is_animated_webp(head: bytes) -> bool:
    return head[8:16] == b"WEBPVP8X" and len(head) > 20 and bool(head[20] & 0x02)


def blueprint(state: SandboxState) -> Blueprint:
    """Graph media routes, Twilio's Media resource, their download URLs and
    `/_sandbox/media` (list or add stored media)."""
    bp = Blueprint("sandbox_media", __name__)
    media = store(state)

    def meta_item(version: str, media_id: str, verb: str) -> StoredMedia | Response:
        accounts = caller(state, version, f"/{version}/{media_id}")
        if isinstance(accounts, Refusal):
            return accounts.response
        item = media.owned(media_id, "meta", accounts)
        wanted = request.args.get("phone_number_id")
        if item is None or (wanted and wanted != item.owner):
            return no_object(media_id, verb)
        return item

    @bp.post("/<version>/<phone_number_id>/media")
    def upload(version: str, phone_number_id: str) -> Response:
        accounts = caller(state, version, f"/{version}")
        if isinstance(accounts, Refusal):
            return accounts.response
        if phone_number_id not in accounts:
            return no_object(phone_number_id, "post")
        form = request.form
        product = form.get("messaging_product")
        if not product:
            return graph_fail(100, message="(#100) The parameter messaging_product is required.")
        if product != "whatsapp":
            return graph_fail(
                100,
                message="(#100) Param messaging_product must be one of {WHATSAPP} - got "
                f'"{product}".',
            )
        upload = request.files.get("file")
        if upload is None:
            return graph_fail(100, message="(#100) The parameter file is required.")
        mime = (form.get("type") or "").split(";", 1)[0].strip().lower()
        if not mime:
            return graph_fail(100, message="(#100) The parameter type is required.")
        data = upload.read()
        if mime not in TYPES:
            allowed_types = ", ".join(sorted(TYPES))
            return graph_fail(
                100,
                message=f"(#100) Param file must be a file with one of the following types: "
                f"{allowed_types}. Received file of type '{mime}'.",
            )
        kind, limit = TYPES[mime]
        if mime == "image/webp" and not _is_animated_webp(data[:32]):
            limit = STATIC_STICKER
        if not data:
            return graph_fail(131053, details="The uploaded file is empty.")
        if len(data) > limit:
            return graph_fail(
                131053,
                details=f"File size too big. Max file size we currently support for {kind} "
                f"({mime}): {limit} bytes. Received: {len(data)} bytes.",
            )
        item = media.add(
            StoredMedia(
                id=new_graph_id(),
                provider="meta",
                owner=phone_number_id,
                mime_type=mime,
                data=data,
                filename=upload.filename or None,
                uploaded=True,
            )
        )
        return graph_json({"id": item.id}, 200)

    @bp.get("/<version>/<media_id>")
    def retrieve(version: str, media_id: str) -> Response:
        item = meta_item(version, media_id, "get")
        if isinstance(item, Response):
            return item
        expires, signature = media.hand_out(item, URL_TTL)
        url = (
            f"{_base_url()}whatsapp_business/attachments/?mid={item.id}&ext={expires}"
            f"&hash={signature}"
        )
        return graph_json(
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": item.mime_type,
                "sha256": item.sha256,
                "file_size": str(len(item.data)),
                "id": item.id,
            },
            200,
        )

    @bp.delete("/<version>/<media_id>")
    def delete(version: str, media_id: str) -> Response:
        item = meta_item(version, media_id, "delete")
        if isinstance(item, Response):
            return item
        with media.lock:
            item.deleted = True
        return graph_json({"success": True}, 200)

    @bp.get("/whatsapp_business/attachments/")
    def download() -> Response:
        args = request.args
        item = media.signed(args.get("mid", ""), args.get("ext", ""), args.get("hash", ""))
        if item is None:
            return Response("Not Found", 404, content_type="text/plain")
        # Like Meta's: the URL alone is not enough, the owning account's token must come too.
        if item.owner not in token_accounts(state, graph_token()):
            return Response("Unauthorized", 401, content_type="text/plain")
        return media.download(item)

    @bp.get(f"{BASE}/<account_sid>/Messages/<message_sid>/Media/<media_sid>")
    def twilio_media(account_sid: str, message_sid: str, media_sid: str) -> Response:
        account = basic_account(state)
        if account is None or account.account_sid != account_sid:
            return unauthorized()
        item = media.owned(media_sid, "twilio", (account_sid,))
        if item is None:
            return error_response(20404, path=request.path)
        expires, signature = media.hand_out(item, TWILIO_URL_TTL)
        location = f"{_base_url()}_storage/twilio/{item.id}?Expires={expires}&Signature={signature}"
        return Response("", 307, headers={"Location": location})

    @bp.get("/_storage/twilio/<media_sid>")
    def storage(media_sid: str) -> Response:
        if request.headers.get("Authorization"):
            # S3's answer to a signed URL that also carries credentials.
            return Response(
                "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; "
                "only the X-Amz-Algorithm query parameter, Signature query string parameter "
                "or the Authorization header should be specified</Message></Error>",
                400,
                content_type="application/xml",
            )
        args = request.args
        item = media.signed(media_sid, args.get("Expires", ""), args.get("Signature", ""))
        if item is None:
            return Response(
                "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
                403,
                content_type="application/xml",
            )
        return media.download(item)

    @bp.get("/_sandbox/media")
    def list_media() -> Response:
        with media.lock:
            items = [i.to_dict() for i in media.items.values()]
        return jsonify(media=items)

    @bp.post("/_sandbox/media")
    def add_media() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify(error="expected a JSON object body"), 400
        provider = data.get("provider", "meta")
        if provider not in ("meta", "twilio"):
            return jsonify(error="provider must be 'twilio' or 'meta'"), 400
        with state.lock:
            default = next(
                iter(state.meta_accounts if provider == "meta" else state.twilio_accounts), ""
            )
        owner = str(data.get("account") or default)
        try:
            item = inject(state, provider, owner, data, data.get("filename"))
        except ValueError as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(item.to_dict()), 201

    return bp


__all__ = ["MediaStore", "StoredMedia", "blueprint", "store"]

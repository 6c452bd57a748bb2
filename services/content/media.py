"""Media: serving inbound media from the provider, and uploading media once to send many.

Inbound media stays at the provider: a Meta message keeps `meta-media:{id}` (Meta's media
id), a Twilio one the `MediaUrl{n}` Twilio posted. `GET /v1/messages/{id}/media/{n}`
fetches it afresh each time with the receiving account's credentials (Meta's download
URL lives 5 minutes, so it is never kept) and streams it through, never holding a whole
file in memory, cut at HERALD_MEDIA_MAX_BYTES.

`POST /v1/media` checks a file against Meta's supported types and sizes, uploads it to
`POST /{phone_number_id}/media` and keeps a tenant-scoped `med_` record. A message or a
campaign names it as `media_id`; it is resolved when the message is accepted (to Meta's
id, with the message type the upload's MIME type implies) and sent as `{"image": {"id"}}`
or as a template's header. Twilio takes media only by URL, so `media_id` is Meta only.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx
from marshmallow import fields
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import HeraldError, InvalidRequest, NotFound, PolicyRefused
from core.shapes import Shape
from models import Campaign, Media, Message, ProviderAccount, Tenant, utcnow
from providers.base import AccountCredentials
from services.reporting.outbound import (
    DeliveryFailed,
    PinnedTransport,
    Refused,
    resolve_target,
)
from services.tenancy.owned import get_owned
from services.tenancy.tenants import credentials

log = logging.getLogger(__name__)

KB = 1024
MB = 1024 * 1024
# Meta's Cloud API "Supported media types": MIME type -> (message type, largest file).
# Sizes are read as binary units (MB = 1,048,576 bytes); Meta does not say which.
META_TYPES: dict[str, tuple[str, int]] = {
    "audio/aac": ("audio", 16 * MB),
    "audio/amr": ("audio", 16 * MB),
    "audio/mpeg": ("audio", 16 * MB),
    "audio/mp4": ("audio", 16 * MB),
    "audio/ogg": ("audio", 16 * MB),  # OPUS codec only, which Meta checks, not Herald
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
    "image/webp": ("sticker", 500 * KB),  # animated; a static sticker is at most 100 KB
    "video/mp4": ("video", 16 * MB),
    "video/3gpp": ("video", 16 * MB),
    "video/3gp": ("video", 16 * MB),
}
STATIC_STICKER_MAX = 100 * KB
# What a file's first bytes must be for the types whose signature is unambiguous.
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "application/pdf": (b"%PDF-",),
}
# Meta keeps uploaded media 30 days ("Media IDs returned by the API expire after 30 days").
META_MEDIA_LIFETIME = timedelta(days=30)
TEMPLATE_HEADER_KINDS = ("image", "video", "document")
CHUNK = 64 * KB
META_REF = "meta-media:"
MEDIA_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")


class BadGateway(HeraldError):
    """The provider could not give the media (or took no upload): Herald did its part."""

    status = 502
    code = "provider_error"


_lock = threading.Lock()
_client: httpx.Client | None = None


def http() -> httpx.Client:
    """One pooled client for media calls; redirects are followed by hand (see `_get`)."""
    global _client
    with _lock:
        if _client is None:
            _client = httpx.Client(
                timeout=httpx.Timeout(get_settings().http_timeout),
                follow_redirects=False,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            )
        return _client


def _graph(path: str) -> str:
    settings = get_settings()
    return f"{settings.meta_graph_base}/{settings.meta_graph_version}/{path}"


def _meta_error(response: httpx.Response, doing: str) -> BadGateway:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = f"Meta answered {response.status_code} {doing}"
    if code is not None:
        text += f" (code {str(code)[:16]})"
    if isinstance(message, str) and message:
        text += f": {message[:300]}"
    return BadGateway(text + ".")


def _too_large(size: int, cap: int) -> BadGateway:
    return BadGateway(
        f"The media is {size} bytes, over HERALD_MEDIA_MAX_BYTES ({cap}).",
        code="media_too_large",
    )


# ---------------------------------------------------------------- inbound: serve


@dataclass(frozen=True)
class MediaSource:
    """Where one inbound media item is and the credentials to fetch it (read from the
    database, so the network part runs with no database session held)."""

    provider: str
    ref: str
    account: AccountCredentials
    content_type: str | None


@dataclass
class MediaStream:
    content_type: str
    length: int | None
    chunks: Iterator[bytes]


def media_links(message: Message) -> list[dict[str, Any]] | None:
    """Herald's URLs for an inbound message's media, with their content types."""
    if message.direction != "inbound" or not message.media_urls:
        return None
    types = (message.options or {}).get("media_types") or []
    return [
        {
            "url": f"/v1/messages/{message.id}/media/{n}",
            "content_type": types[n] if n < len(types) and isinstance(types[n], str) else None,
        }
        for n in range(len(message.media_urls))
    ]


def inbound_media_options(content_types: list[Any]) -> dict[str, Any] | None:
    """The `options` an inbound message keeps beside `media_urls`: each item's MIME type
    (Meta's `mime_type`, Twilio's `MediaContentType{n}`), for its `media` links."""
    types = [t[:128] if isinstance(t, str) else None for t in content_types]
    return {"media_types": types} if any(types) else None


def inbound_media_source(
    session: Session, tenant_id: str, message_id: str, n: int, test: bool | None = None
) -> MediaSource:
    """The n-th media item of a tenant's inbound message; 404 for another tenant's
    message, an outbound one, or an index it does not have. `test`: the caller's key's
    mode; a message of the other mode (for a test key, every inbound message: they are
    live) is not found, so a test key never fetches with the tenant's credentials."""
    missing = f"No message {message_id!r}."
    message = get_owned(session, Message, tenant_id, message_id, missing)
    if test is not None and bool(message.test) != test:
        raise NotFound(missing)
    urls = message.media_urls or []
    if message.direction != "inbound" or not 0 <= n < len(urls) or not isinstance(urls[n], str):
        raise NotFound(f"Message {message_id!r} has no inbound media {n}.")
    row = (
        session.get(ProviderAccount, message.provider_account_id)
        if message.provider_account_id
        else None
    )
    if row is None:
        raise BadGateway(
            "The provider account that received this message is gone.", code="media_unavailable"
        )
    types = (message.options or {}).get("media_types") or []
    return MediaSource(
        provider=message.provider,
        ref=urls[n],
        account=credentials(row),
        content_type=types[n] if n < len(types) and isinstance(types[n], str) else None,
    )


def open_media(source: MediaSource) -> MediaStream:
    """Ask the provider for the media and start the download: every refusal happens
    here, before the first byte is answered, as a 502 with the JSON error shape."""
    cap = get_settings().media_max_bytes
    try:
        if source.provider == "meta":
            response = _open_meta(source, cap)
        elif source.provider == "twilio":
            response = _open_twilio(source)
        else:
            raise BadGateway(f"No media from provider {source.provider!r}.")
    except httpx.HTTPError as exc:
        raise BadGateway(
            f"The provider did not answer ({type(exc).__name__}).", code="provider_unreachable"
        ) from None
    length = _length(response)
    if length is not None and length > cap:
        response.close()
        raise _too_large(length, cap)
    content_type = (
        response.headers.get("Content-Type") or source.content_type or "application/octet-stream"
    )
    return MediaStream(content_type, length, _chunks(response, cap))


def _length(response: httpx.Response) -> int | None:
    raw = response.headers.get("Content-Length", "")
    return int(raw) if raw.isdigit() else None


def _chunks(response: httpx.Response, cap: int) -> Iterator[bytes]:
    """The body as it arrives; past the cap the answer is cut (the client sees a short
    body) rather than relayed whole: only a body with no Content-Length can get there."""
    total = 0
    try:
        for chunk in response.iter_raw(CHUNK):
            total += len(chunk)
            if total > cap:
                log.warning("media cut at %d bytes: over HERALD_MEDIA_MAX_BYTES", cap)
                raise OSError("media over HERALD_MEDIA_MAX_BYTES")
            yield chunk
    finally:
        response.close()


def _open_meta(source: MediaSource, cap: int) -> httpx.Response:
    if not source.ref.startswith(META_REF):
        raise BadGateway("This message's media is not a Meta media id.", code="media_unavailable")
    media_id = source.ref[len(META_REF) :]
    if not MEDIA_ID.fullmatch(media_id):  # a path segment of Graph's, nothing more
        raise BadGateway("This message's Meta media id is not one.", code="media_unavailable")
    token = source.account.secrets.get("access_token", "")
    bearer = {"Authorization": f"Bearer {token}"}
    # A fresh URL every time: Meta's lives 5 minutes.
    answer = http().get(
        _graph(media_id), params={"phone_number_id": source.account.external_id}, headers=bearer
    )
    if answer.status_code != 200:
        raise _meta_error(answer, "for the media's URL")
    try:
        info = answer.json()
    except ValueError:
        info = None
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise BadGateway("Meta answered no media URL.")
    size = str(info.get("file_size") or "")
    if size.isdigit() and int(size) > cap:
        raise _too_large(int(size), cap)
    # The token goes to Graph itself and to Meta's media CDN, the host Meta names.
    response = _get(url, bearer, to={_origin(get_settings().meta_graph_base), META_CDN})
    if response.status_code != 200:
        response.close()
        raise BadGateway(f"Meta's media URL answered {response.status_code}.")
    if not response.headers.get("Content-Type") and isinstance(info.get("mime_type"), str):
        response.headers["Content-Type"] = info["mime_type"]
    return response


def _open_twilio(source: MediaSource) -> httpx.Response:
    base = urlsplit(get_settings().twilio_api_base)
    url = urlsplit(source.ref)
    prefix = f"/2010-04-01/Accounts/{source.account.external_id}/"
    if (
        (url.scheme, url.netloc) != (base.scheme, base.netloc)
        or not url.path.startswith(prefix)
        or ".." in url.path.split("/")
    ):
        # Credentials go only to Twilio's API, for this account's own media.
        raise BadGateway(
            "This message's media URL is not the receiving Twilio account's.",
            code="media_unavailable",
        )
    auth = httpx.BasicAuth(source.account.external_id, source.account.secrets.get("auth_token", ""))
    response = _get(source.ref, auth=auth, to={_origin(get_settings().twilio_api_base)})
    if response.status_code != 200:
        response.close()
        raise BadGateway(f"Twilio's media answered {response.status_code}.")
    return response


Origin = tuple[str, str, int]
# Meta's media download URLs are on its CDN ("lookaside"), which takes the bearer token.
META_CDN: Origin = ("https", "lookaside.fbsbx.com", 443)
MAX_HOPS = 4  # the first URL and up to 3 redirects


def _origin(url: str) -> Origin:
    """(scheme, host, port) of a URL: what "the same host" means for credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _configured_origins() -> set[Origin]:
    """The provider bases the operator configured (the sandbox's on loopback, in
    development and tests): trusted as they are, over http and on private addresses."""
    settings = get_settings()
    bases = [settings.meta_graph_base, settings.twilio_api_base, settings.sandbox_url]
    return {_origin(base) for base in bases if base}


def _pinned(url: str) -> httpx.Client:
    """A client for one hop: `url` is https (or a configured base), its name resolved
    once, every address judged, and the connection pinned to a judged address, so a
    Graph answer or a redirect cannot reach Herald's own network."""
    settings = get_settings()
    configured = _origin(url) in _configured_origins()
    loose = configured or settings.allow_private_callbacks
    if not loose and urlsplit(url).scheme.lower() != "https":
        raise BadGateway("The provider named a media URL that is not https.", code="media_refused")
    try:
        target = resolve_target(url, allow_private=loose, timeout=settings.http_timeout)
    except Refused as exc:
        raise BadGateway(f"The provider's media URL is {exc}.", code="media_refused") from None
    except DeliveryFailed as exc:
        raise BadGateway(f"The media host: {exc}.", code="provider_unreachable") from None
    return httpx.Client(
        transport=PinnedTransport(target),
        timeout=httpx.Timeout(settings.http_timeout),
        follow_redirects=False,
        trust_env=False,  # an environment proxy would connect to the name itself
    )


def _get(
    url: str,
    headers: dict[str, str] | None = None,
    auth: httpx.Auth | None = None,
    *,
    to: set[Origin],
) -> httpx.Response:
    """GET and follow up to 3 redirects, every hop checked and pinned (`_pinned`). The
    credentials go with the first request only, and only when its host is in `to` over
    https (or a configured base): a redirect leads to a signed storage URL (Twilio's
    S3) or somewhere else that must not get them."""
    configured = _configured_origins()
    for hop in range(MAX_HOPS):
        origin = _origin(url)
        credentials_here = (
            hop == 0 and origin in to and (origin[0] == "https" or origin in configured)
        )
        client = _pinned(url)
        request = client.build_request(
            "GET",
            url,
            headers={
                **((headers or {}) if credentials_here else {}),
                "Accept-Encoding": "identity",
                "Connection": "close",  # nothing pooled outlives the lookup it was judged by
            },
        )
        try:
            response = client.send(request, auth=auth if credentials_here else None, stream=True)
        except httpx.HTTPError:
            client.close()
            raise
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            return response
        response.close()
        client.close()
        url = urljoin(url, location)
    raise BadGateway("The provider redirected the media too many times.")


# ---------------------------------------------------------------- upload


class MediaView(Shape):
    """An upload (`media_to_dict`), sent many times as `media_id`."""

    id = fields.String()
    provider = fields.String()
    provider_media_id = fields.String()
    type = fields.String(metadata={"description": "what Meta sends it as: image, document…"})
    mime_type = fields.String()
    size = fields.Integer(metadata={"description": "bytes"})
    filename = fields.String(allow_none=True)
    sha256 = fields.String()
    created_at = fields.DateTime()
    expires_at = fields.DateTime(metadata={"description": "Meta keeps uploads 30 days"})


def media_to_dict(media: Media) -> dict[str, Any]:
    from core.ids import iso

    return {
        "id": media.id,
        "provider": media.provider,
        "provider_media_id": media.provider_media_id,
        "type": media.kind,
        "mime_type": media.mime_type,
        "size": media.size,
        "filename": media.filename,
        "sha256": media.sha256,
        "created_at": iso(media.created_at),
        "expires_at": iso(media.expires_at),
    }


def _mime(declared: str | None, part_type: str | None, filename: str | None) -> str:
    for candidate in (declared, part_type):
        value = (candidate or "").split(";", 1)[0].strip().lower()
        if value and value != "application/octet-stream":
            return value
    guessed = mimetypes.guess_type(filename or "")[0]
    return (guessed or "application/octet-stream").lower()


def _is_animated_webp(head: bytes) -> bool:
    # RIFF....WEBPVP8X, then a flags byte whose bit 1 says "animation".
    return head[8:16] == b"WEBPVP8X" and len(head) > 20 and bool(head[20] & 0x02)


def _human(size: int) -> str:
    return f"{size // MB} MB" if size >= MB else f"{size // KB} KB"


def check_upload(mime: str, size: int, head: bytes) -> str:
    """The Meta message type for a file, or a 400 naming Meta's limit it breaks."""
    if mime not in META_TYPES:
        supported = ", ".join(sorted(META_TYPES))
        raise InvalidRequest(
            f"Meta does not take {mime!r} files.",
            code="unsupported_media_type",
            fields={"type": [f"Not a type Meta sends; supported: {supported}."]},
        )
    kind, limit = META_TYPES[mime]
    if size == 0:
        raise InvalidRequest("The file is empty.", fields={"file": ["The file is empty."]})
    if mime in SIGNATURES and not head.startswith(SIGNATURES[mime]):
        raise InvalidRequest(
            f"The file is not a {mime} file (its first bytes say otherwise).",
            code="invalid_fields",
            fields={"file": [f"Not a {mime} file."]},
        )
    if mime == "image/webp":
        if not (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
            raise InvalidRequest(
                "The file is not a WebP file.",
                code="invalid_fields",
                fields={"file": ["Not an image/webp file."]},
            )
        if not _is_animated_webp(head):
            limit = STATIC_STICKER_MAX
    if size > limit:
        what = {"image/webp": "animated sticker" if limit > STATIC_STICKER_MAX else "sticker"}.get(
            mime, kind
        )
        raise InvalidRequest(
            f"A WhatsApp {what} ({mime}) is at most {_human(limit)} ({limit} bytes); "
            f"this file is {size} bytes.",
            code="media_too_large",
            fields={"file": [f"At most {_human(limit)} for {mime} (Meta's limit)."]},
        )
    return kind


def meta_account(
    session: Session, tenant_id: str, phone_number_id: str | None = None
) -> ProviderAccount:
    """The tenant's Meta account to upload through: the one with `phone_number_id`, or
    the tenant's first (the one messages go through)."""
    query = select(ProviderAccount).where(
        ProviderAccount.tenant_id == tenant_id, ProviderAccount.provider == "meta"
    )
    if phone_number_id:
        query = query.where(ProviderAccount.external_id == phone_number_id)
    account = session.scalars(query.order_by(ProviderAccount.created_at)).first()
    if account is None:
        which = f" with phone_number_id {phone_number_id!r}" if phone_number_id else ""
        raise PolicyRefused(
            f"This tenant has no Meta account{which}.", code="provider_not_configured"
        )
    return account


def upload_media(
    session: Session,
    tenant: Tenant,
    file: IO[bytes],
    *,
    filename: str | None,
    part_type: str | None,
    declared_type: str | None = None,
    provider: str | None = None,
    phone_number_id: str | None = None,
) -> Media:
    """Check a file against Meta's limits, upload it, and record it for the tenant."""
    if provider not in (None, "", "meta"):
        raise InvalidRequest(
            "Only Meta takes uploaded media; Twilio takes media by URL (send media_url).",
            fields={"provider": ["Must be meta: Twilio sends media only from a URL."]},
        )
    mime = _mime(declared_type, part_type, filename)
    file.seek(0, 2)
    size = file.tell()
    file.seek(0)
    head = file.read(32)
    file.seek(0)
    kind = check_upload(mime, size, head)
    account_row = meta_account(session, tenant.id, phone_number_id)
    account = credentials(account_row)
    digest = hashlib.sha256()
    for block in iter(lambda: file.read(CHUNK), b""):
        digest.update(block)
    file.seek(0)
    session.commit()  # nothing written yet: no transaction held open during the upload
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1][:255] or None
    try:
        answer = http().post(
            _graph(f"{account.external_id}/media"),
            headers={"Authorization": f"Bearer {account.secrets.get('access_token', '')}"},
            data={"messaging_product": "whatsapp", "type": mime},
            files={"file": (name or f"upload.{kind}", file, mime)},
        )
    except httpx.HTTPError as exc:
        raise BadGateway(
            f"Meta did not answer the upload ({type(exc).__name__}).", code="provider_unreachable"
        ) from None
    if answer.status_code != 200:
        raise _meta_error(answer, "to the upload")
    try:
        media_id = answer.json().get("id")
    except (ValueError, AttributeError):
        media_id = None
    if not isinstance(media_id, str | int) or not str(media_id).strip():
        raise BadGateway("Meta answered the upload without a media id.")
    now = utcnow()
    media = Media(
        tenant_id=tenant.id,
        provider="meta",
        provider_account_id=account.id,
        provider_media_id=str(media_id)[:128],
        kind=kind,
        mime_type=mime,
        size=size,
        filename=name,
        sha256=digest.hexdigest(),
        created_at=now,
        expires_at=now + META_MEDIA_LIFETIME,
    )
    session.add(media)
    session.flush()
    log.info("media uploaded id=%s tenant=%s type=%s size=%d", media.id, tenant.id, mime, size)
    return media


def get_media(session: Session, tenant_id: str, media_id: str) -> Media:
    return get_owned(session, Media, tenant_id, media_id, f"No media {media_id!r}.")


def delete_media(session: Session, tenant_id: str, media_id: str) -> None:
    """Delete an upload at Meta, then Herald's record; a message naming it afterwards is
    refused (422 media_not_found). Meta no longer knowing it counts as deleted."""
    media = get_media(session, tenant_id, media_id)
    row = session.get(ProviderAccount, media.provider_account_id)
    if row is not None:
        account = credentials(row)
        provider_id, phone_id = media.provider_media_id, account.external_id
        session.commit()  # no transaction held open during the call
        try:
            answer = http().delete(
                _graph(provider_id),
                params={"phone_number_id": phone_id},
                headers={"Authorization": f"Bearer {account.secrets.get('access_token', '')}"},
            )
        except httpx.HTTPError as exc:
            raise BadGateway(
                f"Meta did not answer the deletion ({type(exc).__name__}).",
                code="provider_unreachable",
            ) from None
        gone = answer.status_code == 400 and _graph_code(answer) == 100
        if answer.status_code != 200 and not gone:
            raise _meta_error(answer, "to the deletion")
        media = get_media(session, tenant_id, media_id)
    session.delete(media)
    session.flush()
    log.info("media deleted id=%s tenant=%s", media_id, tenant_id)


def campaigns_using(session: Session, tenant_id: str, media_id: str) -> list[str]:
    """The tenant's running or paused campaigns whose header is `media_id`."""
    return list(
        session.scalars(
            select(Campaign.id).where(
                Campaign.tenant_id == tenant_id,
                Campaign.status.in_(("running", "paused")),
                Campaign.options["media"].as_string() == media_id,
            )
        )
    )


def _graph_code(response: httpx.Response) -> Any:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


# ---------------------------------------------------------------- send by media_id


def resolve_media_id(
    session: Session,
    tenant_id: str,
    data: dict[str, Any],
    account_id: str,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The `options` a message (or campaign) sending `data['media_id']` keeps: Meta's
    media id and the message type. Unknown, another tenant's, another account's or
    expired media is refused now (422), as is content the media cannot carry (400)."""
    media_id = data["media_id"]
    media = session.scalars(
        select(Media).where(Media.id == media_id, Media.tenant_id == tenant_id)
    ).first()
    if media is None:
        raise PolicyRefused(
            f"No media {media_id!r}: upload it with POST /v1/media and use its med_ id.",
            code="media_not_found",
        )
    if media.provider_account_id != account_id:
        raise PolicyRefused(
            f"Media {media_id!r} was uploaded through another Meta account than this message's.",
            code="media_account_mismatch",
        )
    from core.ids import iso

    when = max(at, utcnow()) if at else utcnow()
    if media.expires_at <= when:
        raise PolicyRefused(
            f"Media {media_id!r} expired at Meta on {iso(media.expires_at)} "
            "(Meta keeps uploads 30 days): upload it again.",
            code="media_expired",
        )
    errors: dict[str, list[str]] = {}
    body = data.get("body") or ""
    template = data.get("template")
    if template:
        if template.get("components") is not None:
            errors["media_id"] = [
                "With template.components, put the header media in the components."
            ]
        elif media.kind not in TEMPLATE_HEADER_KINDS:
            errors["media_id"] = [
                f"A template header takes an image, video or document, not {media.kind}."
            ]
    elif media.kind == "sticker" and body:
        errors["body"] = ["Meta sends a sticker without a caption."]
    elif media.kind != "audio" and len(body) > 1024:
        errors["body"] = [f"At most 1024 characters as a Meta {media.kind} caption."]
    if errors:
        raise InvalidRequest(
            "The request does not suit its media.", code="invalid_fields", fields=errors
        )
    return {"media_id": media.provider_media_id, "media_type": media.kind, "media": media.id}

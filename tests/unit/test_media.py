"""Media rules that need no provider: Meta's upload limits, where credentials may go,
and how uploaded media is sent."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from providers.base import AccountCredentials, OutboundMessage
from providers.meta import build_payload
from services.content.media import BadGateway, MediaSource, check_upload, open_media

TWILIO = AccountCredentials(
    id="acc_1",
    tenant_id="ten_1",
    provider="twilio",
    external_id="AC" + "a1" * 16,
    settings={},
    secrets={"auth_token": "secret"},
)
META = AccountCredentials(
    id="acc_2",
    tenant_id="ten_1",
    provider="meta",
    external_id="1098",
    settings={},
    secrets={"access_token": "secret"},
)
ANIMATED_WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8X\x00\x00\x00\x00\x02" + bytes(11)
STATIC_WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(16)


@pytest.mark.parametrize(
    ("mime", "size", "head", "kind"),
    [
        ("image/jpeg", 5 * 1024 * 1024, b"\xff\xd8\xff\xe0", "image"),
        ("video/mp4", 16 * 1024 * 1024, b"\x00\x00\x00\x18ftypmp42", "video"),
        ("application/pdf", 100 * 1024 * 1024, b"%PDF-1.7", "document"),
        ("image/webp", 500 * 1024, ANIMATED_WEBP, "sticker"),
        ("image/webp", 100 * 1024, STATIC_WEBP, "sticker"),
        ("audio/ogg", 1, b"OggS", "audio"),
    ],
)
def test_files_within_metas_limits_pass(mime: str, size: int, head: bytes, kind: str) -> None:
    assert check_upload(mime, size, head) == kind


@pytest.mark.parametrize(
    ("mime", "size", "head", "words"),
    [
        ("image/jpeg", 5 * 1024 * 1024 + 1, b"\xff\xd8\xff", "at most 5 MB"),
        ("video/mp4", 16 * 1024 * 1024 + 1, b"", "at most 16 MB"),
        ("image/webp", 100 * 1024 + 1, STATIC_WEBP, "sticker (image/webp) is at most 100 KB"),
        ("image/webp", 500 * 1024 + 1, ANIMATED_WEBP, "animated sticker (image/webp) is at most"),
        ("image/gif", 10, b"GIF89a", "does not take 'image/gif'"),
        ("image/png", 10, b"GIF89a", "not a image/png"),
        ("text/plain", 0, b"", "empty"),
    ],
)
def test_files_meta_would_refuse_are_400s_naming_the_limit(
    mime: str, size: int, head: bytes, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_upload(mime, size, head)
    assert words in refused.value.message


@pytest.mark.parametrize(
    "ref",
    [
        "https://evil.example/2010-04-01/Accounts/{sid}/Messages/MM1/Media/ME1",
        "{base}/2010-04-01/Accounts/ACother/Messages/MM1/Media/ME1",
        "{base}/2010-04-01/Accounts/{sid}/../ACother/Messages/MM1/Media/ME1",
    ],
)
def test_twilio_credentials_go_only_to_the_accounts_own_media(ref: str) -> None:
    from core.config import get_settings

    url = ref.format(base=get_settings().twilio_api_base, sid=TWILIO.external_id)
    with pytest.raises(BadGateway) as refused:
        open_media(MediaSource("twilio", url, TWILIO, None))
    assert refused.value.code == "media_unavailable"


@pytest.mark.parametrize("ref", ["meta-media:../1098/messages", "meta-media:", "https://x/y"])
def test_a_meta_media_reference_is_one_path_segment(ref: str) -> None:
    with pytest.raises(BadGateway) as refused:
        open_media(MediaSource("meta", ref, META, None))
    assert refused.value.code == "media_unavailable"


def _message(**fields) -> OutboundMessage:  # type: ignore[no-untyped-def]
    return OutboundMessage(herald_id="msg_1", channel="whatsapp", to="+12025550143", **fields)


def test_uploaded_media_is_sent_by_id() -> None:
    image = build_payload(_message(media_id="77", media_type="image", body="Look"))
    assert image["type"] == "image" and image["image"] == {"id": "77", "caption": "Look"}
    sticker = build_payload(_message(media_id="78", media_type="sticker", body="x"))
    assert sticker["sticker"] == {"id": "78"}
    template = build_payload(
        _message(
            media_id="79",
            media_type="document",
            template={"name": "invoice", "language": "en_US", "variables": []},
        )
    )
    assert template["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "document", "document": {"id": "79"}}]}
    ]


def test_a_body_without_a_length_is_cut_at_the_cap() -> None:
    import httpx

    from services.content.media import _chunks

    response = httpx.Response(200, content=iter([b"a" * 70_000, b"b" * 70_000]))
    assert "Content-Length" not in response.headers
    chunks = _chunks(response, 100_000)
    assert next(chunks) == b"a" * 65_536  # relayed as it comes, 64 KB at a time
    with pytest.raises(OSError):
        next(chunks)
    assert response.is_closed

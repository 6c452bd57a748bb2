"""The content a campaign's message takes from its campaign.

A campaign stores its content (body, media URLs, template, options) once, on its own
row; each of its messages carries only what differs per recipient: the number, the
template's `variables` (its `template` column holds just `{"variables": [...]}`), the
sender (in `options`). Copying the content into every row cost a 100 KB template
105 KB per recipient (bench/README.md, "Campaign storage").

Wherever a campaign's message is sent or shown, `fill_campaign_content` puts the
campaign's content back on it, composed exactly as the row used to carry it, so the
provider receives the same request. The values are set as loaded, not as changes:
they are never written back to the row. A campaign written before migration 0015
(`shared_content` false) is left alone: its rows carry their own copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from models import Campaign, Message


@dataclass(frozen=True)
class CampaignContent:
    """What every message of one campaign sends."""

    body: str | None
    media_urls: list[str] | None
    template: dict[str, Any] | None
    options: dict[str, Any] | None


# Per batch: campaign id -> its content, or None (not a shared-content campaign).
ContentCache = dict[str, CampaignContent | None]


def recipient_template(variables: list[str]) -> dict[str, Any] | None:
    """What a shared-content campaign's row keeps of the template: its own variables."""
    return {"variables": variables} if variables else None


def compose(
    content: CampaignContent,
    own_template: dict[str, Any] | None,
    own_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """A row's full content from its campaign's and its own: what the row carried
    before 0015 (the template with the recipient's variables, the options with its
    sender)."""
    template = content.template
    if template is not None and own_template:
        template = {**template, **own_template}
    options = {**(content.options or {}), **(own_options or {})} or None
    return {
        "body": content.body,
        "media_urls": content.media_urls,
        "template": template,
        "options": options,
    }


def campaign_contents(
    session: Session, campaign_ids: Iterable[str], cache: ContentCache | None = None
) -> ContentCache:
    """The content of each campaign named, read in one query for those not in `cache`
    (which is filled and returned): a batch of any size costs one lookup."""
    cache = {} if cache is None else cache
    wanted = set(campaign_ids) - cache.keys()
    if wanted:
        rows = session.execute(
            select(
                Campaign.id,
                Campaign.shared_content,
                Campaign.body,
                Campaign.media_urls,
                Campaign.template,
                Campaign.options,
            ).where(Campaign.id.in_(wanted))
        )
        for row in rows:
            cache[row.id] = (
                CampaignContent(row.body, row.media_urls, row.template, row.options)
                if row.shared_content
                else None
            )
        for missing in wanted - cache.keys():
            cache[missing] = None
    return cache


def same_body(body: str | None) -> ColumnElement[bool]:
    """Messages whose body, as sent, is `body`: their own, or their shared-content
    campaign's (their own column is NULL)."""
    shared = select(Campaign.id).where(Campaign.shared_content.is_(True), Campaign.body == body)
    return or_(
        Message.body == body,
        and_(Message.body.is_(None), Message.campaign_id.in_(shared)),
    )


def fill_campaign_content(
    session: Session, messages: Iterable[Message], cache: ContentCache | None = None
) -> None:
    """Give each message of a shared-content campaign its campaign's content (see the
    module's docstring); no query when none of the messages is a campaign's."""
    messages = [m for m in messages if m.campaign_id]
    if not messages:
        return
    contents = campaign_contents(session, {m.campaign_id for m in messages}, cache)  # type: ignore[misc]
    for message in messages:
        content = contents.get(message.campaign_id)  # type: ignore[arg-type]
        if content is None:
            continue
        for name, value in compose(content, message.template, message.options).items():
            set_committed_value(message, name, value)

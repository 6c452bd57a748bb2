"""WhatsApp users as Meta names them to a business: a business-scoped user id (BSUID,
`user_id`) for each user and business portfolio (here: each WABA), in every webhook; a
username a user may adopt; and a user with a username may share no phone number at all,
so webhooks carry the BSUID alone. A send may address a BSUID (`recipient`); a number or
BSUID change is told by a `system` message (`user_changed_number`, `user_changed_user_id`)."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from sandbox.state import SandboxState

# A two-letter country code, a period, up to 128 letters and digits; a parent BSUID has
# `ENT.` after the country (US.ENT.118…).
BSUID = re.compile(r"[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}")
# Country calling code -> the ISO country a BSUID starts with (the sandbox's few).
_COUNTRIES = (
    ("1", "US"),
    ("44", "GB"),
    ("52", "MX"),
    ("54", "AR"),
    ("55", "BR"),
    ("91", "IN"),
    ("49", "DE"),
    ("33", "FR"),
    ("34", "ES"),
)


@dataclass
class User:
    user_id: str
    phone: str | None  # bare digits (its WhatsApp id); None: never shared
    username: str | None = None
    hide_phone: bool = False  # a username user: webhooks omit the phone number
    name: str = "Sandbox User"

    @property
    def shown_phone(self) -> str | None:
        """The phone number webhooks carry: none for a username user hiding it."""
        return None if self.hide_phone else self.phone

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "phone": f"+{self.phone}" if self.phone else None,
            "username": self.username,
            "hide_phone": self.hide_phone,
            "name": self.name,
        }


class Directory:
    """Users per WABA: by BSUID, and by phone (WhatsApp id)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_id: dict[tuple[str, str], User] = {}
        self.by_phone: dict[tuple[str, str], str] = {}

    def clear(self) -> None:
        with self.lock:
            self.by_id.clear()
            self.by_phone.clear()


def directory(state: SandboxState) -> Directory:
    return state.part("users", Directory)


def _country(phone: str | None) -> str:
    for code, country in _COUNTRIES:
        if phone and phone.startswith(code):
            return country
    return "US"


def new_bsuid(phone: str | None, seed: str | None = None) -> str:
    """A BSUID like Meta's (`US.13491208655302741918`): stable for a seed, else random."""
    raw = hashlib.sha256(seed.encode()).digest() if seed else secrets.token_bytes(16)
    return f"{_country(phone)}.{int.from_bytes(raw[:9], 'big') % 10**20:020d}"


def user_for_phone(state: SandboxState, waba_id: str, wa_id: str) -> User:
    """The user of this WhatsApp id, made on first sight with a BSUID stable for it."""
    book = directory(state)
    with book.lock:
        found = book.by_phone.get((waba_id, wa_id))
        if found is not None:
            return book.by_id[(waba_id, found)]
        user = User(new_bsuid(wa_id, f"{waba_id}:{wa_id}"), wa_id)
        book.by_id[(waba_id, user.user_id)] = user
        book.by_phone[(waba_id, wa_id)] = user.user_id
        return user


def user_by_id(state: SandboxState, waba_id: str, user_id: str) -> User | None:
    book = directory(state)
    with book.lock:
        return book.by_id.get((waba_id, user_id))


def register(state: SandboxState, waba_id: str, data: dict[str, Any], wa_id: str | None) -> User:
    """A user as the control API describes one: `phone` (its WhatsApp id, given), a
    `username`, `hide_phone` (webhooks without the number), `name`. With no phone, a
    username is required: the user is known by BSUID alone."""
    username = data.get("username")
    if username is not None and (not isinstance(username, str) or not 1 <= len(username) <= 35):
        raise ValueError("'username' must be a string of 1 to 35 characters")
    if wa_id is None and not username:
        raise ValueError("a user without a phone number needs a 'username'")
    if wa_id is not None:
        user = user_for_phone(state, waba_id, wa_id)
    else:
        user = User(new_bsuid(None), None)
        book = directory(state)
        with book.lock:
            book.by_id[(waba_id, user.user_id)] = user
    book = directory(state)
    with book.lock:
        if username:
            user.username = username
        if data.get("hide_phone") is not None:
            user.hide_phone = bool(data["hide_phone"])
        if wa_id is None:
            user.hide_phone = True
        if isinstance(data.get("profile_name") or data.get("name"), str):
            user.name = str(data.get("profile_name") or data.get("name"))[:100]
    return user


def change_user_id(state: SandboxState, waba_id: str, user: User) -> str:
    """Give the user a new BSUID; returns the previous one."""
    book = directory(state)
    with book.lock:
        old = user.user_id
        book.by_id.pop((waba_id, old), None)
        user.user_id = new_bsuid(user.phone)
        book.by_id[(waba_id, user.user_id)] = user
        if user.phone:
            book.by_phone[(waba_id, user.phone)] = user.user_id
        return old


def change_number(
    state: SandboxState, waba_id: str, user: User, new_wa_id: str
) -> tuple[str, str | None]:
    """Move the user to a new number, which (as on WhatsApp) also regenerates the BSUID;
    returns the previous BSUID and number."""
    book = directory(state)
    with book.lock:
        old_id, old_phone = user.user_id, user.phone
        book.by_id.pop((waba_id, old_id), None)
        if old_phone:
            book.by_phone.pop((waba_id, old_phone), None)
        user.phone = new_wa_id
        user.user_id = new_bsuid(new_wa_id)
        book.by_id[(waba_id, user.user_id)] = user
        book.by_phone[(waba_id, new_wa_id)] = user.user_id
        return old_id, old_phone


def contact_entry(
    user: User, *, with_username: bool = True, dialled: bool = False
) -> dict[str, Any]:
    """The user as a webhook's `contacts[]` names it: `user_id` always, `wa_id` only when
    the number is shared (or the business sent to the number: `dialled`),
    `profile.username` when the user has one."""
    profile: dict[str, Any] = {"name": user.name}
    if with_username and user.username:
        profile["username"] = user.username
    entry: dict[str, Any] = {"profile": profile}
    phone = user.phone if dialled else user.shown_phone
    if phone:
        entry["wa_id"] = phone
    entry["user_id"] = user.user_id
    return entry

"""What an SMS campaign will cost, before it is sent: the operator's price per segment for
each destination country (a tenant's `sms_prices`), times the segments of every message.

Twilio's price depends on the destination country (and on the account's negotiated
rates), and is known only after a message is final; the estimate lets a tenant see the
money at creation, from rates its operator sets:
`{"currency": "USD", "per_segment": {"US": "0.0079", "GB": "0.0400", "*": "0.0500"}}`
(`*`: every other country). No table, or a destination country it does not price and no
`*`: no estimate (`null`), never a guess.
"""

from __future__ import annotations

from collections import Counter
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import phonenumbers
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

OTHER = "*"  # the price of every country the table does not name
MAX_PRICE = Decimal(100)  # per segment: a price above it is a typo (cents for units)
CENTS = Decimal("0.01")
MAX_COUNTRIES = 250


class SmsPricesSchema(Schema):
    """A tenant's `sms_prices`: one currency, a price per segment per ISO country."""

    class Meta:
        unknown = RAISE

    currency = fields.String(required=True, metadata={"description": "ISO 4217, e.g. USD"})
    per_segment = fields.Dict(
        keys=fields.String(
            validate=validate.OneOf([*sorted(phonenumbers.SUPPORTED_REGIONS), OTHER])
        ),
        values=fields.String(),
        required=True,
        metadata={"description": "ISO country (or * for every other) → price per segment"},
    )

    @validates_schema(pass_original=True)
    def _whole(self, _data: dict[str, Any], original: Any, **_: Any) -> None:
        # Required even in a tenant update (a partial load): the table is set whole.
        missing = [k for k in ("currency", "per_segment") if k not in (original or {})]
        if missing:
            raise ValidationError({k: ["Missing data for required field."] for k in missing})

    @validates("currency")
    def _currency(self, value: str, **_: Any) -> None:
        if not (len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()):
            raise ValidationError("An ISO 4217 code, e.g. USD.")

    @validates("per_segment")
    def _prices(self, value: dict[str, str], **_: Any) -> None:
        if not 1 <= len(value) <= MAX_COUNTRIES:
            raise ValidationError(f"From 1 to {MAX_COUNTRIES} countries.")
        for country, price in value.items():
            try:
                amount = Decimal(price)
            except InvalidOperation:
                raise ValidationError(f'{country}: a decimal, as text (e.g. "0.0079").') from None
            if not amount.is_finite() or not 0 <= amount <= MAX_PRICE:
                raise ValidationError(f"{country}: from 0 to {MAX_PRICE} per segment.")
            if amount.as_tuple().exponent < -6:  # type: ignore[operator]
                raise ValidationError(f"{country}: at most 6 decimal places.")


def estimate_cost(
    prices: dict[str, Any] | None, segments: int, countries: Counter[str | None]
) -> dict[str, str] | None:
    """`{"amount": "12.34", "currency": "USD"}` for messages of `segments` segments to
    `countries` (ISO country → messages), or None: no table, or a country it does not
    price. Rounded half up to the cent once, over the whole campaign."""
    if not prices or segments <= 0:
        return None
    table = prices.get("per_segment") or {}
    total = Decimal(0)
    for country, count in countries.items():
        price = table.get(country or "", table.get(OTHER))
        if price is None:
            return None
        total += Decimal(price) * count
    amount = (total * segments).quantize(CENTS, rounding=ROUND_HALF_UP)
    return {"amount": str(amount), "currency": str(prices["currency"])}

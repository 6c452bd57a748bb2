"""The base of the marshmallow schemas that describe what Herald answers.

Each resource keeps its fast serializer (a dict built by hand: `message_to_dict` runs
on the hottest paths) and, beside it, one response schema naming the same fields with
their types. /openapi.json shows the schema (api/openapi.py), and
tests/unit/test_response_shapes.py builds every serializer's output from objects with
every field filled and checks it against the schema, both ways: a field added to one
and not the other fails there. The schemas only describe; nothing dumps with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from marshmallow import Schema, fields


class Shape(Schema):
    """A response body. Every field is in every answer (OpenAPI `required`) except
    those `Meta.optional` names (by key or attribute); a field that may be null says
    `allow_none`. A free-form
    value (metadata, a provider's own JSON) is a `fields.Dict()` or `fields.Raw()`."""

    class Meta:
        optional: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        optional = set(getattr(self.Meta, "optional", ()))
        for name, field in self.fields.items():
            field.required = not {name, field.data_key} & optional


def shape(
    name: str, declared: dict[str, fields.Field], *, optional: Iterable[str] = ()
) -> type[Shape]:
    """A Shape whose fields come from a table (statuses, settings, dimensions): the
    same names as the code that builds the dict reads, so the two cannot drift."""
    meta = type("Meta", (), {"optional": tuple(optional)})
    return type(name, (Shape,), {**declared, "Meta": meta})


def listing(item: type[Schema], name: str, *, page: bool = False) -> type[Shape]:
    """`{"data": [item, …]}`, with `next_cursor` for a page; `name` is its component's."""
    declared: dict[str, fields.Field] = {"data": fields.List(fields.Nested(item))}
    if page:
        declared["next_cursor"] = fields.String(
            allow_none=True, metadata={"description": "the next page's `cursor`; null at the end"}
        )
    return shape(name, declared)


class ErrorBodyView(Shape):
    """What went wrong (core/errors.py `HeraldError.to_dict`)."""

    class Meta:
        optional = ("fields",)

    code = fields.String(metadata={"description": "stable, for programs (`invalid_fields`…)"})
    message = fields.String(metadata={"description": "for people"})
    fields_ = fields.Dict(
        data_key="fields", metadata={"description": "per field, what is wrong with it"}
    )


class ErrorView(Shape):
    """Every error Herald answers, outside the seeds' routes."""

    error = fields.Nested(ErrorBodyView)

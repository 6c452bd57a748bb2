"""Reading Herald's answers with its own OpenAPI document, as a strict client would.

`Walk.check` follows a JSON value through a schema of the document ($ref, anyOf, allOf,
arrays, nested objects) and notes every place where they part: a key the schema does
not declare, a required key missing, a value of another type, null where it is not
nullable. A key is declared when the object's `properties` name it; only an object
whose `additionalProperties` is true or a schema (metadata, prices per currency) or an
untyped schema (a provider's own JSON) takes keys it does not name. `declared` lists
the key paths a schema names, to check that samples with every field filled use them
all.
"""

from __future__ import annotations

from typing import Any

TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


class Walk:
    """Values checked against one document: `problems` found so far, and `used`, the
    declared key paths the values had."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.problems: list[str] = []
        self.used: set[str] = set()

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def component(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def check(self, schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
        """The problems of `value` (also kept in `self.problems`), named by place."""
        problems, used = self._check(schema, value, where, "")
        self.problems += problems
        self.used |= used
        return problems

    def _check(
        self, schema: dict[str, Any], value: Any, where: str, path: str
    ) -> tuple[list[str], set[str]]:
        schema = self.resolve(schema)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                tries = [self._check(branch, value, where, path) for branch in schema[keyword]]
                passed = [t for t in tries if not t[0]]
                if passed:
                    return [], set().union(*(t[1] for t in passed))
                return min(tries, key=lambda t: len(t[0]))
        problems: list[str] = []
        used: set[str] = set()
        for part in schema.get("allOf", ()):
            p, u = self._check(part, value, where, path)
            problems += p
            used |= u
        if value is None:
            if not schema.get("nullable"):
                problems.append(f"{where}: null, not nullable")
            elif "enum" in schema and None not in schema["enum"]:
                problems.append(f"{where}: null, not in {schema['enum']}")
            return problems, used
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {value!r} not in {schema['enum']}")
        kind = schema.get("type")
        if kind is not None:
            expected = TYPES[kind]
            if not isinstance(value, expected) or (isinstance(value, bool) and kind != "boolean"):
                problems.append(f"{where}: {type(value).__name__}, documented {kind}")
                return problems, used
        if isinstance(value, dict) and (kind == "object" or "properties" in schema):
            p, u = self._object(schema, value, where, path)
            problems += p
            used |= u
        elif isinstance(value, list) and "items" in schema:
            for n, item in enumerate(value):
                p, u = self._check(schema["items"], item, f"{where}[{n}]", f"{path}[]")
                problems += p
                used |= u
        return problems, used

    def _object(
        self, schema: dict[str, Any], value: dict[str, Any], where: str, path: str
    ) -> tuple[list[str], set[str]]:
        problems: list[str] = []
        used: set[str] = set()
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", False)
        for key in sorted(set(schema.get("required", ())) - set(value)):
            problems.append(f"{where}: required key {key!r} missing")
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            if key in properties:
                used.add(here)
                p, u = self._check(properties[key], item, f"{where}.{key}", here)
            elif extra is True or extra == {}:
                continue  # free-form: its keys are the client's or the provider's
            elif isinstance(extra, dict):
                here = f"{path}.*" if path else "*"
                used.add(here)
                p, u = self._check(extra, item, f"{where}.{key}", here)
            else:
                problems.append(f"{where}: key {key!r} not in the document")
                continue
            problems += p
            used |= u
        return problems, used

    def declared(
        self,
        schema: dict[str, Any],
        path: str = "",
        chain: tuple[str, ...] = (),
        stop: frozenset[str] | set[str] = frozenset(),
    ) -> set[str]:
        """Every key path `schema` names, through nested objects, arrays and branches;
        not into free-form values, nor into the schemas `stop` names ($refs)."""
        if "$ref" in schema:
            if schema["$ref"] in chain or schema["$ref"] in stop:
                return set()
            chain = (*chain, schema["$ref"])
            schema = self.resolve(schema)
        paths: set[str] = set()
        for keyword in ("anyOf", "oneOf", "allOf"):
            for branch in schema.get(keyword, ()):
                paths |= self.declared(branch, path, chain, stop)
        for key, sub in schema.get("properties", {}).items():
            here = f"{path}.{key}" if path else key
            paths |= {here} | self.declared(sub, here, chain, stop)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            here = f"{path}.*" if path else "*"
            paths |= {here} | self.declared(extra, here, chain, stop)
        if "items" in schema:
            paths |= self.declared(schema["items"], f"{path}[]", chain, stop)
        return paths

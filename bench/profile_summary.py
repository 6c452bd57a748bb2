"""Where the CPU goes, from py-spy raw profiles (`py-spy record --format raw`, the
files `bench.compare --profile DIR` writes): on-CPU samples by layer (first
matching frame from the leaf up), the functions with the most inclusive time,
and the hottest leaf functions.

    python -m bench.profile_summary DIR/herald-api.txt [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# Layer of a sample: the first of these a frame's file path matches, leaf first.
LAYERS = [
    ("logging", re.compile(r"(^|/)logging/|(^|/)traceback\.py|(^|/)core/logs\.py")),
    ("psycopg (driver, wire)", re.compile(r"(^|/)psycopg")),
    ("SQLAlchemy", re.compile(r"(^|/)sqlalchemy/")),
    ("celery/kombu/redis (broker)", re.compile(r"(^|/)(kombu|celery|billiard|redis|vine)/")),
    # Before the HTTP client: gunicorn/http/ would match its pattern too.
    ("gunicorn", re.compile(r"(^|/)gunicorn/")),
    ("twilio client/requests", re.compile(r"(^|/)(twilio|requests|urllib3|http)/|socket\.py")),
    ("marshmallow", re.compile(r"(^|/)marshmallow/")),
    ("phonenumbers", re.compile(r"(^|/)phonenumbers/")),
    ("json", re.compile(r"(^|/)json/")),
    ("flask/werkzeug", re.compile(r"(^|/)(flask|werkzeug|jinja2)/")),
    ("cryptography/hmac", re.compile(r"(^|/)cryptography/|(^|/)(hmac|hashlib|secrets)\.py")),
    ("herald code", re.compile(r"(^|/)(api|core|services|models|workers|providers|herald)/")),
]
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """(frames root first as (function, file), count) per distinct stack."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw.strip())
            frames.append((m["func"], m["file"]) if m else (raw.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def layer_of(frames: list[tuple[str, str]]) -> str:
    for _func, file in reversed(frames):
        for name, pattern in LAYERS:
            if pattern.search(file):
                return name
    return "other (interpreter, threading, stdlib)"


def summarize(path: Path, top: int = 25) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks) or 1
    layers: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        layers[layer_of(frames)] += n
        seen = set()
        for func, file in frames:
            name = f"{func} ({_short(file)})"
            if name not in seen:
                seen.add(name)
                inclusive[name] += n
        func, file = frames[-1]
        leaf[f"{func} ({_short(file)})"] += n
    out = [f"{path}: {total} on-CPU samples", "", "by layer (leaf-most match):"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in layers.most_common()]
    out += ["", f"top {top} inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out += ["", f"top {top} self:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(out)


def _short(file: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/work/wt/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(summarize(path, args.top))
        print()


if __name__ == "__main__":
    main()

"""Reads protobuf text format (config.pbtxt) back into dicts: the tests' check of what
export/pbtxt.py writes (repeated fields become lists, enum identifiers come back as Enum)."""

from __future__ import annotations

import re

from export.pbtxt import Enum

_UNESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_TOKEN = re.compile(r"""\s+|\#[^\n]*|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{}\[\]:,;]|[^\s{}\[\]:,;"'\#]+)""")
_INT = re.compile(r"[-+]?(0x[0-9a-fA-F]+|\d+)$")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"protobuf text: cannot read {text[pos : pos + 20]!r} at offset {pos}")
        if m.group(1):
            out.append(m.group(1))
        pos = m.end()
    return out


def _atom(token: str):
    """Scalar value of one token: quoted string, bool, int, float or enum identifier (Enum)."""
    if token[0] in "\"'":
        return re.sub(r"\\(.)", lambda m: _UNESCAPES.get(m.group(1), m.group(1)), token[1:-1])
    if token in ("true", "false"):
        return token == "true"
    if _INT.match(token):
        return int(token, 0)
    try:
        return float(token)
    except ValueError:
        return Enum(token)


def _add(message: dict, key: str, value) -> None:
    """Store a field; a key seen again (or written with [ ]) becomes a list."""
    if key not in message:
        message[key] = value
        return
    old = message[key] if isinstance(message[key], list) else [message[key]]
    message[key] = old + (value if isinstance(value, list) else [value])


def _value(tokens: list, pos: int):
    token = tokens[pos]
    if token == "{":
        return _message(tokens, pos + 1, "}")
    if token != "[":
        return _atom(token), pos + 1
    items, pos = [], pos + 1
    while tokens[pos] != "]":
        item, pos = _value(tokens, pos)
        items.append(item)
        pos += tokens[pos] == ","
    return items, pos + 1


def _message(tokens: list, pos: int, end: str | None):
    message = {}
    while (tokens[pos] if pos < len(tokens) else None) != end:
        key = tokens[pos]
        pos += 1 + (tokens[pos + 1] == ":")
        value, pos = _value(tokens, pos)
        _add(message, key, value)
        pos += pos < len(tokens) and tokens[pos] in ",;"
    return message, pos + 1


def parse_config_text(text: str) -> dict:
    """Read protobuf text (a config.pbtxt) into dicts; repeated fields become lists.

    Enum identifiers come back as :class:`Enum` (a str), so ``to_pbtxt(parse_config_text(t))``
    round-trips what :func:`to_pbtxt` writes. Raises ValueError on malformed text.
    """
    tokens = _tokens(text)
    try:
        return _message(tokens, 0, None)[0]
    except IndexError:
        raise ValueError("protobuf text: unexpected end (unbalanced braces or brackets)") from None


def config_parameters(config: dict) -> dict[str, str]:
    """{key: string_value} of a parsed config's ``parameters`` map."""
    entries = config.get("parameters", [])
    return {e["key"]: e["value"]["string_value"] for e in (entries if isinstance(entries, list) else [entries])}

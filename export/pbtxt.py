"""Protobuf text format (Triton's config.pbtxt) written from plain dicts.

A message is a dict; values are scalars (bool, int, float, str), :class:`Enum` identifiers
(written bare), nested dicts (messages) and lists (repeated fields).
"""

from __future__ import annotations


class Enum(str):
    """A protobuf enum identifier (e.g. TYPE_FP32): written without quotes."""


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _scalar(value) -> str:
    """One scalar in protobuf text format: bool, int, float, Enum (bare) or str (quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to protobuf text")


def _field(key: str, value, pad: str) -> list[str]:
    """Lines of one field: message ``k { }``, repeated message ``k [ {..}, {..} ]``, list ``k: [a, b]``, scalar."""
    if isinstance(value, dict):
        return [f"{pad}{key} {{", *_lines(value, pad + "  "), f"{pad}}}"]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        inner = pad + "  "
        blocks = [f"{inner}{{\n" + "\n".join(_lines(v, inner + "  ")) + f"\n{inner}}}" for v in value]
        return [f"{pad}{key} [", ",\n".join(blocks), f"{pad}]"]
    if isinstance(value, list):
        return [f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]"]
    return [f"{pad}{key}: {_scalar(value)}"]


def _lines(message: dict, pad: str) -> list[str]:
    return [line for k, v in message.items() if v is not None for line in _field(k, v, pad)]


def to_pbtxt(message: dict) -> str:
    """Serialize a message given as a dict (values: scalars, Enum, dicts, lists) to protobuf text."""
    return "\n".join(_lines(message, "")) + "\n"

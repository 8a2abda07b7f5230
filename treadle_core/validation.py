"""Input checked at the door: ids, item data, edited artefacts, numbers and durations.

Plain functions, each raising `InputError` with one line that names the thing
and what to do, before anything reaches a store. The CLI calls them; so will
the operator API. Why each limit is what it is: docs/design/cli-and-plugins.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import InputError

__all__ = [
    "MAX_ARTEFACT_BYTES",
    "MAX_ATTEMPTS",
    "MAX_BACKOFF",
    "MAX_CONCURRENCY",
    "MAX_DURATION",
    "MAX_ID_LENGTH",
    "MAX_INT",
    "MAX_JSON_DEPTH",
    "MAX_LIMIT",
    "check_duration",
    "check_id",
    "check_int",
    "check_item",
    "check_json",
    "check_retry_growth",
    "parse_duration",
    "parse_json",
    "parse_rate",
    "show",
]

#: Characters in an id (item, stage, pipeline): VARCHAR(255) on PostgreSQL and MySQL.
MAX_ID_LENGTH = 255
#: Levels of nesting in item data and edited artefacts.
MAX_JSON_DEPTH = 100
#: Largest integer in JSON data: what a signed 64-bit integer holds.
MAX_INT = 2**63 - 1
#: Longest duration anywhere (retry delays, timeouts, leases, prune ages): ten years.
MAX_DURATION = 3650 * 86400.0
#: Most stage executions in flight for one process.
MAX_CONCURRENCY = 10_000
#: Most attempts a retry budget may allow.
MAX_ATTEMPTS = 1_000
#: Largest retry back-off factor.
MAX_BACKOFF = 1_000.0
#: Most rows a listing returns (``review list --limit``), or a batch holds.
MAX_LIMIT = 1_000_000
#: Largest ``max_artefact_bytes``: 1 GiB.
MAX_ARTEFACT_BYTES = 2**30


def show(value: Any, width: int = 60) -> str:
    """``repr`` cut to ``width`` characters: safe to print whatever the value holds."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def _surrogate(text: str) -> str | None:
    """The first lone surrogate in ``text`` (not valid Unicode, cannot be written as UTF-8)."""
    for char in text:
        if "\ud800" <= char <= "\udfff":
            return char
    return None


# --- ids ---------------------------------------------------------------------------------


def check_id(value: Any, what: str = "item id") -> str:
    """``value`` if it is an id every store takes: a non-empty string of at most 255
    characters, valid Unicode, without NUL."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, not {type(value).__name__} {show(value)}")
    if not value:
        raise InputError(f"{what} is empty; give a non-empty string")
    if "\x00" in value:
        raise InputError(f"{what} {show(value)} contains a NUL character (\\x00)")
    bad = _surrogate(value)
    if bad is not None:
        raise InputError(
            f"{what} {show(value)} contains {bad!r}, which is not valid Unicode "
            "(is the input UTF-8?)"
        )
    if len(value) > MAX_ID_LENGTH:
        raise InputError(
            f"{what} {show(value)} is {len(value)} characters long; "
            f"at most {MAX_ID_LENGTH} are allowed"
        )
    return value


# --- JSON --------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised from inside ``json.loads`` hooks; carries the message."""


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 19 or abs(int(text)) > MAX_INT:
        raise _Refused(f"the number {show(text, 30)} is too large (integers must be within ±2**63)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"the number {show(text, 30)} is too large for a float")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON (use null or a string)")


def parse_json(text: str | bytes, where: str) -> Any:
    """The JSON value of ``text`` (bytes must be UTF-8), checked with `check_json`.

    ``where`` starts the message: ``items.jsonl:3``, ``--data``, ``edit.json``.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{where}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start}); save the file as UTF-8"
            ) from None
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _Refused as exc:
        raise InputError(f"{where}: {exc}") from None
    except RecursionError:
        raise InputError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON: {exc}") from None
    check_json(value, where)
    return value


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if key.isidentifier():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{show(key, 30)}]"


def check_json(value: Any, where: str, *, root: str = "") -> Any:
    """``value`` if it is plain JSON data that every store and every reader can take back:
    dicts with string keys, lists, strings of valid Unicode, integers within ±2**63,
    finite floats, booleans and None, nested at most 100 levels."""
    stack: list[tuple[Any, str, int]] = [(value, root, 1)]
    while stack:
        node, path, depth = stack.pop()
        label = f"{where}: {path}" if path else where
        if depth > MAX_JSON_DEPTH:
            raise InputError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, Mapping):
            for key, child in node.items():
                _check_key(key, label)
                stack.append((child, _path(path, key), depth + 1))
        elif isinstance(node, list | tuple):
            for index, child in enumerate(node):
                stack.append((child, _path(path, index), depth + 1))
        else:
            _check_scalar(node, label)
    return value


def _check_key(key: Any, label: str) -> None:
    if not isinstance(key, str):
        raise InputError(f"{label}: key {show(key)} is not a string")
    bad = _surrogate(key)
    if bad is not None:
        raise InputError(f"{label}: key {show(key)} holds {bad!r}, which is not valid Unicode")


def _check_scalar(node: Any, label: str) -> None:
    if node is None or isinstance(node, bool):
        return
    if isinstance(node, str):
        bad = _surrogate(node)
        if bad is not None:
            raise InputError(f"{label}: {bad!r} is not valid Unicode (is the input UTF-8?)")
    elif isinstance(node, int):
        if abs(node) > MAX_INT:
            raise InputError(f"{label}: {show(node, 30)} is too large (within ±2**63)")
    elif isinstance(node, float):
        if not math.isfinite(node):
            raise InputError(f"{label}: {node} is not JSON (use null or a string)")
    else:
        raise InputError(f"{label}: {type(node).__name__} is not JSON data")


def check_item(item_id: Any, data: Any, where: str = "") -> tuple[str, dict[str, Any]]:
    """An item's id and data checked: `check_id`, then a JSON object (`check_json`)."""
    prefix = f"{where}: " if where else ""
    try:
        check_id(item_id)
    except InputError as exc:
        raise InputError(f"{prefix}{exc}") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{prefix}item {item_id!r}: data must be a JSON object")
    check_json(data, f"{prefix}item {item_id!r}", root="data")
    return item_id, dict(data)


# --- numbers -----------------------------------------------------------------------------


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """``value`` if it is an integer within ``low``..``high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what}: expected an integer, got {show(value)}")
    if not low <= value <= high:
        raise InputError(f"{what}: {show(value, 30)} is out of range ({low} to {high:,})")
    return value


def check_duration(seconds: float, what: str, *, positive: bool = False) -> float:
    """``seconds`` if it is a finite duration, at most ten years (more than zero if
    ``positive``)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"{what}: {seconds!r} is not a duration")
    if seconds > MAX_DURATION:
        raise InputError(f"{what}: {seconds:.6g} s is too long (at most 3650d, ten years)")
    if positive and seconds <= 0:
        raise InputError(f"{what}: must be longer than zero")
    return seconds


def check_retry_growth(
    max_attempts: int, delay: float, backoff: float, max_delay: float | None
) -> None:
    """Refuse a retry budget whose last delay (``delay * backoff ** (max_attempts - 2)``)
    overflows, or exceeds ten years without a ``max_delay`` to cap it."""
    retries = max_attempts - 1
    if retries < 2 or backoff <= 1:
        return
    exponent = (retries - 1) * math.log10(backoff)
    if exponent > 300:
        raise InputError(
            f"backoff {backoff:g} over {max_attempts} attempts grows past any number; "
            "lower backoff or max_attempts"
        )
    if max_delay is None and delay * backoff ** (retries - 1) > MAX_DURATION:
        raise InputError(
            f"the last retry would wait {delay * backoff ** (retries - 1):.3g} s (more than "
            "ten years); set max_delay to cap it"
        )


# --- durations and rates -----------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+$")
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``500ms``, ``2s``, ``5m``, ``1h``, ``1d``, ``1h30m`` or a bare number."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use 500ms, 2s, 5m, 1h)")
    if isinstance(value, int | float):
        if value < 0 or value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a duration (must be zero or more seconds)")
        return _bounded(float(value), value)
    if isinstance(value, str) and len(value) <= 100:
        if _NUMBER.match(value):
            return _bounded(float(value), value)
        if _DURATION.match(value):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
            return _bounded(seconds, value)
    raise ValueError(f"{show(value)} is not a duration (use 500ms, 2s, 5m, 1h)")


def _bounded(seconds: float, given: Any) -> float:
    if not seconds <= MAX_DURATION:  # also catches inf from "1e999"
        raise ValueError(f"{show(given)} is too long (at most 3650d, ten years)")
    return seconds


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(.+?)\s*$")
#: Most starts a rate may allow per period (its start times are kept, one per start).
MAX_RATE_COUNT = 10_000


def parse_rate(value: Any) -> tuple[int, float]:
    """``"20/s"``, ``"1/2s"``, ``"100/m"``, ``"5000/h"`` as (starts, seconds per period)."""
    found = _RATE.match(value) if isinstance(value, str) and len(value) <= 100 else None
    if found is not None:
        count, period = int(found[1]), found[2]
        try:
            seconds = parse_duration(period if period[0].isdigit() else f"1{period}")
        except ValueError:
            seconds = 0.0
        if 1 <= count <= MAX_RATE_COUNT and seconds > 0:
            return count, seconds
    raise ValueError(
        f"{show(value)} is not a rate: write starts per period, like 1/s, 20/s, 100/m or "
        f"5/2s (1 to {MAX_RATE_COUNT:,} starts)"
    )

"""``{item.id}`` / ``{item.data[key]}`` templates, as used by pipeline-file options."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from .model import WorkItem


class TemplateError(ValueError):
    """A template names something other than ``item.id`` / ``item.data[...]``, or a missing key."""


class _ItemFormatter(string.Formatter):
    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        root = field_name.split(".", 1)[0].split("[", 1)[0]
        if root not in kwargs or "._" in field_name or field_name.startswith("_"):
            raise TemplateError(
                f"template field {{{field_name}}} is not allowed; "
                "use {item.id} or {item.data[key]}"
            )
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, AttributeError) as exc:
            raise TemplateError(f"template field {{{field_name}}}: no such value ({exc})") from None


_FORMATTER = _ItemFormatter()


def render(template: str, item: WorkItem, **extra: Any) -> str:
    """``template`` with ``{item.id}``, ``{item.data[key]}`` (and ``extra`` names) filled in."""
    if "{" not in template and "}" not in template:
        return template
    try:
        return _FORMATTER.format(template, item=item, **extra)
    except TemplateError:
        raise
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"template {template!r}: {exc}") from None


def check(template: str) -> None:
    """Raise `TemplateError` if ``template`` is malformed (unbalanced braces, bad fields)."""
    try:
        for _, field_name, _, _ in _FORMATTER.parse(template):
            if field_name is not None and field_name.split(".", 1)[0].split("[", 1)[0] != "item":
                raise TemplateError(
                    f"template field {{{field_name}}} is not allowed; "
                    "use {item.id} or {item.data[key]}"
                )
    except ValueError as exc:
        if isinstance(exc, TemplateError):
            raise
        raise TemplateError(f"template {template!r}: {exc}") from None

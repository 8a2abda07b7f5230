"""A review's form (a JSON Schema) as HTML fields, and the posted fields back as JSON.

Pure: schema in, fields out; posted text in, values and problems out. The library checks
the values against the schema when the decision is made (`resolve_review`: the
authority, which saves nothing when they fail); this module only turns each field's text
into JSON of the right type, and says which field a problem is about, so that the page
can show it next to that field.

A property the page has no control for (an object, an array, a ``$ref``, ``anyOf`` ...)
is edited as JSON text; a form that is not an object with ``properties`` is answered as
one JSON object.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Posted field names are the property's name after this prefix: no property can clash
#: with the decision form's own fields (action, comment, reason ...).
PREFIX = "v."
#: The field that holds a whole form's answers as JSON, when the schema has no properties.
WHOLE = ""
#: More options than this: a drop-down instead of radio buttons.
MAX_RADIOS = 5
#: A string that may be longer than this is a box that wraps (and grows), not one line.
MAX_ONE_LINE = 40
_SIMPLE = ("string", "integer", "number", "boolean")
_FORMATS = {"email": "email", "uri": "url", "url": "url", "date": "date", "time": "time"}


@dataclass(frozen=True)
class Option:
    """One answer of an ``enum``: what is posted (its JSON) and what is shown."""

    value: str
    label: str


@dataclass(frozen=True)
class Field:
    """One property of the form, as the page shows it."""

    name: str
    #: "string" (one line), "text" (a box that wraps), "integer", "number", "boolean",
    #: "enum" or "json".
    kind: str
    label: str
    help: str | None
    required: bool
    options: tuple[Option, ...] = ()
    #: HTML attributes of the control (type, min, max, step, maxlength ...).
    attrs: Mapping[str, Any] = field(default_factory=dict)
    #: The text the control starts with (the schema's default).
    initial: str = ""

    @property
    def input_name(self) -> str:
        return PREFIX + self.name

    @property
    def radios(self) -> bool:
        return self.kind == "enum" and len(self.options) <= MAX_RADIOS


@dataclass(frozen=True)
class Answers:
    """What the reviewer posted: the values for the library, each field's text (to show
    again), and the fields whose text is not a value of their type."""

    values: dict[str, Any]
    texts: dict[str, str]
    problems: dict[str, str]


def fields(schema: Mapping[str, Any] | None) -> list[Field]:
    """The controls of a form, in the schema's order; a form without properties is one
    JSON field named `WHOLE`."""
    if schema is None:
        return []
    props = schema.get("properties")
    if schema.get("type", "object") != "object" or not isinstance(props, Mapping) or not props:
        return [Field(WHOLE, "json", "Answers (a JSON object)", _text(schema), True)]
    required = schema.get("required")
    needed = set(required) if isinstance(required, list) else set()
    return [
        _field(str(n), p if isinstance(p, Mapping) else {}, n in needed) for n, p in props.items()
    ]


def _text(schema: Mapping[str, Any]) -> str | None:
    parts = [schema.get("title"), schema.get("description")]
    return " — ".join(str(p) for p in parts if p) or None


def _kind(prop: Mapping[str, Any]) -> str:
    """Which control a property gets."""
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(_scalar(v) for v in enum):
        return "enum"
    if any(k in prop for k in ("$ref", "anyOf", "oneOf", "allOf", "not", "if", "const")):
        return "json"
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]: an optional string
        real = [k for k in kind if k != "null"]
        kind = real[0] if len(real) == 1 else None
    if kind == "string":
        # One line only for what is short or has a format (email, date...): a longer value
        # wraps in a box instead of scrolling out of sight.
        most = prop.get("maxLength")
        short = isinstance(most, int) and most <= MAX_ONE_LINE
        return "string" if short or prop.get("format") in _FORMATS else "text"
    return kind if kind in _SIMPLE else "json"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _field(name: str, prop: Mapping[str, Any], required: bool) -> Field:
    kind = _kind(prop)
    label = str(prop.get("title") or name)
    help_text = str(prop["description"]) if prop.get("description") else None
    attrs: dict[str, Any] = {}
    options: tuple[Option, ...] = ()
    if kind in ("string", "text"):
        fmt = _FORMATS.get(str(prop.get("format") or ""))
        if kind == "string":
            attrs["type"] = fmt or "text"
        for key, attr in (("maxLength", "maxlength"), ("minLength", "minlength")):
            if isinstance(prop.get(key), int):
                attrs[attr] = prop[key]
    elif kind in ("integer", "number"):
        attrs.update(type="number", step="1" if kind == "integer" else "any")
        attrs["inputmode"] = "numeric" if kind == "integer" else "decimal"
        for key, attr in (("minimum", "min"), ("maximum", "max")):
            if isinstance(prop.get(key), int | float) and not isinstance(prop.get(key), bool):
                attrs[attr] = prop[key]
    elif kind == "enum":
        options = tuple(Option(json.dumps(v), _label(v)) for v in prop["enum"])
    elif kind == "json":
        help_text = " ".join(filter(None, [help_text, "As JSON" + _shape(prop) + "."]))
    default = prop.get("default")
    return Field(name, kind, label, help_text, required, options, attrs, _initial(kind, default))


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _shape(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    return {"array": ': a list, e.g. ["a", "b"]', "object": ': an object, {"key": …}'}.get(
        kind if isinstance(kind, str) else "", ""
    )


def _initial(kind: str, default: Any) -> str:
    """A default as the text its control starts with."""
    if default is None:
        return ""
    if kind == "boolean":
        return "on" if default is True else ""
    if kind == "enum":
        return json.dumps(default)
    if kind == "json":
        return json.dumps(default, indent=2, ensure_ascii=False)
    return str(default) if not isinstance(default, bool) else ""


def initial_texts(form_fields: list[Field]) -> dict[str, str]:
    """Each field's text before the reviewer typed anything."""
    return {f.name: f.initial for f in form_fields}


def read(form_fields: list[Field], posted: Mapping[str, Any]) -> Answers:
    """The values of the posted fields, each converted to its JSON type. An empty
    optional field is left out; an empty required one, or text that is not a value of
    its type, is a problem of that field (nothing is guessed)."""
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    problems: dict[str, str] = {}
    for f in form_fields:
        raw = posted.get(f.input_name)
        text = "" if raw is None else str(raw)
        texts[f.name] = text
        if f.kind == "boolean":
            values[f.name] = bool(text)  # a checkbox: sent when ticked
            continue
        if not text.strip():
            if f.required:
                problems[f.name] = "required: fill it in"
            continue
        try:
            value = _convert(f, text)
        except ValueError as exc:
            problems[f.name] = str(exc)
            continue
        if f.name == WHOLE:
            if not isinstance(value, dict):
                problems[f.name] = 'the answers are a JSON object ({"field": value, …})'
                continue
            values.update(value)
        else:
            values[f.name] = value
    return Answers(values, texts, problems)


def _convert(f: Field, text: str) -> Any:
    match f.kind:
        case "string" | "text":
            return text
        case "integer":
            try:
                return int(text.strip())
            except ValueError:
                raise ValueError(f"{text.strip()!r} is not a whole number") from None
        case "number":
            return _number(text.strip())
        case "enum":
            for option in f.options:
                if option.value == text:
                    return json.loads(text)
            raise ValueError(f"{text!r} is not one of the options")
        case _:
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
                ) from None


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a number")
    return value


_FIELD_PROBLEM = re.compile(r"form field (['\"])(?P<path>.*?)\1: (?P<what>.*)", re.S)
_MISSING = re.compile(r"form: (['\"])(?P<path>.*?)\1 is a required property")


def problem_field(message: str, form_fields: list[Field]) -> tuple[str, str] | None:
    """The field a library message about the form's values is about, and what it says
    (``form field 'stars': 9 is greater than the maximum of 5`` -> ("stars", "9 is ...")).
    A problem deep in a JSON field belongs to that field."""
    names = {f.name for f in form_fields}
    found = _FIELD_PROBLEM.search(message)
    if found:
        path = found["path"]
        top = path.split("/", 1)[0]
        what = found["what"] if top == path else f"{path}: {found['what']}"
        if top in names:
            return top, what
    missing = _MISSING.search(message)
    if missing and missing["path"] in names:
        return missing["path"], "required: fill it in"
    if "form" in message and WHOLE in names:
        return WHOLE, message.split(": ", 1)[-1]
    return None

"""A form's JSON Schema as fields, posted text as JSON values, and who may vote: pure
functions, tested by tables."""

from __future__ import annotations

from typing import Any

import pytest
from treadle_ui.ballot import Ballot
from treadle_ui.forms import WHOLE, fields, problem_field, read


@pytest.mark.parametrize(
    ("prop", "kind", "attrs"),
    [
        ({"type": "string"}, "text", {}),
        ({"type": "string", "maxLength": 40}, "string", {"type": "text", "maxlength": 40}),
        ({"type": "string", "format": "email"}, "string", {"type": "email"}),
        ({"type": "string", "maxLength": 2000}, "text", {"maxlength": 2000}),
        ({"type": ["string", "null"], "maxLength": 9}, "string", {"type": "text", "maxlength": 9}),
        (
            {"type": "integer", "minimum": 1},
            "integer",
            {"type": "number", "step": "1", "inputmode": "numeric", "min": 1},
        ),
        ({"type": "number"}, "number", {"type": "number", "step": "any", "inputmode": "decimal"}),
        ({"type": "boolean"}, "boolean", {}),
        ({"enum": ["a", 2, None]}, "enum", {}),
        ({"type": "object", "properties": {"x": {}}}, "json", {}),
        ({"type": "array"}, "json", {}),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "json", {}),
        ({"$ref": "#/$defs/x"}, "json", {}),
        ({}, "json", {}),
    ],
)
def test_each_property_gets_the_control_of_its_type(
    prop: dict[str, Any], kind: str, attrs: dict[str, Any]
) -> None:
    [f] = fields({"type": "object", "properties": {"x": prop}})
    assert (f.kind, dict(f.attrs)) == (kind, attrs)


def test_labels_help_required_options_and_defaults_come_from_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tone": {"enum": ["plain", "warm"], "title": "Tone", "default": "warm"},
            "n": {"type": "integer", "description": "how many"},
            "ok": {"type": "boolean", "default": True},
            "tags": {"type": "array", "default": ["a"]},
        },
        "required": ["tone"],
    }
    tone, n, ok, tags = fields(schema)
    assert (tone.label, tone.required, tone.initial) == ("Tone", True, '"warm"')
    assert [(o.value, o.label) for o in tone.options] == [('"plain"', "plain"), ('"warm"', "warm")]
    assert tone.radios
    assert (n.label, n.help, n.required, n.input_name) == ("n", "how many", False, "v.n")
    assert ok.initial == "on"
    assert tags.initial == '[\n  "a"\n]' and tags.help == 'As JSON: a list, e.g. ["a", "b"].'
    many = fields({"properties": {"x": {"enum": list(range(9))}}})[0]
    assert many.kind == "enum" and not many.radios  # a drop-down


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object"},
        {"type": "object", "properties": {}},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"type": "array"},
    ],
)
def test_a_form_without_properties_is_one_json_field(schema: dict[str, Any]) -> None:
    [f] = fields(schema)
    assert (f.name, f.kind, f.required) == (WHOLE, "json", True)


SCHEMA = {
    "type": "object",
    "properties": {
        "s": {"type": "string"},
        "i": {"type": "integer"},
        "f": {"type": "number"},
        "b": {"type": "boolean"},
        "e": {"enum": ["x", 1]},
        "j": {"type": "object"},
    },
    "required": ["i"],
}


@pytest.mark.parametrize(
    ("posted", "values", "problems"),
    [
        (
            {"v.s": " hi ", "v.i": " 3 ", "v.f": "2", "v.b": "on", "v.e": "1", "v.j": '{"a": 1}'},
            {"s": " hi ", "i": 3, "f": 2, "b": True, "e": 1, "j": {"a": 1}},
            {},
        ),
        ({"v.i": "3", "v.f": "2.5", "v.e": '"x"'}, {"i": 3, "f": 2.5, "b": False, "e": "x"}, {}),
        ({"v.i": "", "v.s": ""}, {"b": False}, {"i": "required: fill it in"}),
        ({"v.i": "3.0"}, {"b": False}, {"i": "'3.0' is not a whole number"}),
        ({"v.i": "1", "v.f": "nan"}, {"i": 1, "b": False}, {"f": "'nan' is not a number"}),
        ({"v.i": "1", "v.f": "1e999"}, {"i": 1, "b": False}, {"f": "'1e999' is not a number"}),
        (
            {"v.i": "1", "v.e": '"y"'},
            {"i": 1, "b": False},
            {"e": "'\"y\"' is not one of the options"},
        ),
        (
            {"v.i": "1", "v.j": "{"},
            {"i": 1, "b": False},
            {
                "j": "not valid JSON: Expecting property name enclosed in double quotes "
                "at line 1, column 2"
            },
        ),
    ],
)
def test_posted_text_becomes_json_of_each_fields_type(
    posted: dict[str, str], values: dict[str, Any], problems: dict[str, str]
) -> None:
    answers = read(fields(SCHEMA), posted)
    assert (answers.values, answers.problems) == (values, problems)


@pytest.mark.parametrize(
    ("message", "found"),
    [
        ("item 'a' stage 'r': form field 'i': 9 is greater than 5", ("i", "9 is greater than 5")),
        ("item 'a' stage 'r': form field 'j/k/0': 'x' is bad", ("j", "j/k/0: 'x' is bad")),
        ("item 'a' stage 'r': form: 'i' is a required property", ("i", "required: fill it in")),
        ("item 'a' stage 'r': form field 'nope': wrong", None),
        ("item 'a' stage 'r': choose one of: a, b", None),
    ],
)
def test_a_library_message_is_placed_at_the_field_it_names(
    message: str, found: tuple[str, str] | None
) -> None:
    assert problem_field(message, fields(SCHEMA)) == found


def ballot(approvers: tuple[str, ...] | None, required: int, voters: list[str]) -> Ballot:
    votes = tuple({"reviewer": v, "choice": None} for v in voters)
    return Ballot(approvers, required, votes, (), False)


@pytest.mark.parametrize(
    ("b", "who", "refusal"),
    [
        (ballot(None, 1, []), "eve", None),
        (ballot(None, 1, []), None, None),
        (ballot(("ana", "bo"), 1, []), "ana", None),
        (
            ballot(("ana", "bo"), 1, []),
            "eve",
            "Only its approvers (ana, bo) may decide this review; you are signed in as eve.",
        ),
        (
            ballot(("ana", "bo", "cy"), 3, ["ana"]),
            "ana",
            "You have approved it already (one vote each); it waits for 2 more approvals.",
        ),
        (ballot(None, 2, ["ana"]), "bo", None),
    ],
)
def test_who_may_vote_and_why_not(b: Ballot, who: str | None, refusal: str | None) -> None:
    assert b.refusal(who) == refusal


def test_the_tally_and_what_a_review_asks() -> None:
    assert ballot(None, 1, []).tally is None
    assert ballot(None, 3, []).tally == "0 of 3 approvals"
    assert ballot(None, 3, ["ana", "bo"]).tally == "2 of 3 approvals: ana, bo"
    asks = Ballot(None, 2, (), ("a", "b", "c", "d", "e"), True).asks()
    assert asks == ["choose: a · b · c · d · …", "form", "0 of 2 approvals"]
    assert not Ballot(None, 1, (), (), True).editable
    assert Ballot(("ana",), 1, (), (), False).editable

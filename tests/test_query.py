"""Query algebra: parsing, formatting and malformed queries (pure Python, no model)."""

from __future__ import annotations

import pytest

from clipwidgets.errors import InvalidInputError
from clipwidgets.query import QueryPart, format_query, parse_negative, parse_query


def test_plain_text_is_one_positive_part():
    assert parse_query("  a dog playing in the park ") == [QueryPart(1.0, "a dog playing in the park")]


def test_weights_and_operators():
    assert parse_query("2:beach + sunset - people") == [
        QueryPart(2.0, "beach"), QueryPart(1.0, "sunset"), QueryPart(-1.0, "people")]
    assert parse_query("0.5:blue sky - 1.5:clouds") == [QueryPart(0.5, "blue sky"), QueryPart(-1.5, "clouds")]


@pytest.mark.parametrize("text", ["t-shirt on a chair", "black-and-white photo", "C++ code on a screen",
                                  "a 3-year-old child", "dog+cat", "sign saying: stop", "photo: a dog"])
def test_signs_and_colons_inside_text_do_not_split(text):
    assert parse_query(text) == [QueryPart(1.0, text)]


@pytest.mark.parametrize(("text", "expected"), [
    ("dog - grass", [QueryPart(1.0, "dog"), QueryPart(-1.0, "grass")]),
    ("dog -grass", [QueryPart(1.0, "dog"), QueryPart(-1.0, "grass")]),
    ("- grass + dog", [QueryPart(-1.0, "grass"), QueryPart(1.0, "dog")]),
    ("-grass dog + cat", [QueryPart(-1.0, "grass dog"), QueryPart(1.0, "cat")]),
    ("+dog", [QueryPart(1.0, "dog")]),
])
def test_sign_after_whitespace_or_at_start_is_an_operator(text, expected):
    assert parse_query(text) == expected


@pytest.mark.parametrize("parts", [
    [QueryPart(2.0, "beach"), QueryPart(1.0, "sunset"), QueryPart(-1.0, "people")],
    [QueryPart(-0.5, "crowd"), QueryPart(3.0, "red car")],
    [QueryPart(1.0, "t-shirt"), QueryPart(-2.5, "black-and-white")],
])
def test_format_round_trips(parts):
    assert parse_query(format_query(parts)) == parts


def test_format_is_canonical():
    assert format_query(parse_query("2:beach+x  +  sunset -people")) == "2:beach+x + sunset - people"


def test_negative_box_negates_every_part():
    assert parse_negative("grass + 2:people") == [QueryPart(-1.0, "grass"), QueryPart(-2.0, "people")]
    assert parse_negative("grass - sky") == [QueryPart(-1.0, "grass"), QueryPart(1.0, "sky")]
    assert parse_negative("") == [] and parse_negative("   ") == [] and parse_negative(None) == []


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("- people", "at least one positive part"),
    ("-people - 2:crowd", "at least one positive part"),
    ("x:beach", "must be a positive number"),
    ("beach + photo:dog", "must be a positive number"),
    ("0:beach", "must be a positive number"),
    ("inf:beach", "must be a positive number"),
    ("dog + ", r"Empty part after '\+'"),
    ("dog - - cat", "Empty part after '-'"),
    ("-", "Empty part"),
])
def test_malformed_queries_are_refused_with_a_reason(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_query(text)


def test_a_query_must_be_a_string():
    with pytest.raises(InvalidInputError, match="must be a string"):
        parse_query(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="must be a string"):
        parse_negative(["grass"])  # type: ignore[arg-type]

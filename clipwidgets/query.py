"""Query algebra: "2:beach + sunset - people" -> weighted text parts. Pure Python, no model.

The rules (the same in the library, the CLI and the panel):

- An *operator* is a `+` or `-` at the start of the query or right after whitespace:
  "dog - grass", "dog -grass" and "-grass dog" all subtract "grass". A `+` or `-` inside a word is
  text: "t-shirt", "black-and-white", "C++" never split.
- A part may start with a weight written `W:text` (no space before the colon), W a positive
  number: "2:beach", "0.5:sky". A weight that is not a positive number ("x:beach", "0:beach") is
  an error, so "photo:beach" must be written "photo beach". The sign comes from the operator.
- Every query needs at least one positive part; empty parts ("dog + ", "dog - - cat") are errors.
- The combined vector is sum(weight * sign * embedding(part)), renormalised (see `searcher.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import InvalidInputError

__all__ = ["QueryPart", "format_query", "parse_negative", "parse_query"]

_OPERATOR = re.compile(r"(?:^|(?<=\s))([+-])")
_WEIGHT = re.compile(r"^([^\s:]+):(?=\S)")


@dataclass(frozen=True)
class QueryPart:
    """One term of a query: a signed weight (negative = subtract) and its text."""

    weight: float
    text: str


def parse_query(query: str) -> list[QueryPart]:
    """Parse `query` into parts; raises InvalidInputError for an empty or malformed query."""
    parts = _parse_terms(query, what="query")
    if not parts:
        raise InvalidInputError("The query is empty: type some text, e.g. 'a dog playing in the park'.")
    if all(part.weight < 0 for part in parts):
        raise InvalidInputError(f"{query.strip()!r} has only negative parts: a query needs at least one "
                                "positive part, e.g. 'beach - people'.")
    return parts


def parse_negative(text: str | None) -> list[QueryPart]:
    """Parse the text of a "negative" box: the same syntax, every part's sign flipped ("" -> [])."""
    if text is None:
        return []
    return [QueryPart(-part.weight, part.text) for part in _parse_terms(text, what="negative query")]


def format_query(parts: list[QueryPart]) -> str:
    """The canonical text of `parts`, which `parse_query` reads back: "2:beach + sunset - people"."""
    pieces = []
    for i, part in enumerate(parts):
        magnitude = abs(part.weight)
        term = part.text if magnitude == 1 else f"{magnitude:g}:{part.text}"
        if i == 0:
            pieces.append(term if part.weight > 0 else f"- {term}")
        else:
            pieces.append(f"{'+' if part.weight > 0 else '-'} {term}")
    return " ".join(pieces)


def _parse_terms(text: str, *, what: str) -> list[QueryPart]:
    if not isinstance(text, str):
        raise InvalidInputError(f"A {what} must be a string, not {type(text).__name__}.")
    pieces = _OPERATOR.split(text)
    # pieces: [leading text, op, text, op, text, ...]
    terms = [("+", pieces[0])] + list(zip(pieces[1::2], pieces[2::2], strict=True))
    if not pieces[0].strip() and len(pieces) > 1:
        terms = terms[1:]
    parts = []
    for operator, term in terms:
        term = term.strip()
        if not term:
            if len(pieces) == 1:
                return []
            raise InvalidInputError(f"Empty part after {operator!r} in {what} {text.strip()!r}: write "
                                    "'text + text - text', with text between the operators.")
        weight, term_text = _weighted(term, what=what)
        parts.append(QueryPart(weight if operator == "+" else -weight, term_text))
    return parts


def _weighted(term: str, *, what: str) -> tuple[float, str]:
    match = _WEIGHT.match(term)
    if match is None:
        return 1.0, term
    label = match.group(1)
    try:
        weight = float(label)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidInputError(f"{term!r} in the {what}: the weight {label!r} must be a positive number, "
                                "as in 2:beach or 0.5:beach (write 'photo beach', not 'photo:beach').")
    return weight, term[match.end():].strip()

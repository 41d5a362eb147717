"""What the panel shows, computed without widgets: paging labels, status lines, card and detail text."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .thumbnails import DEFAULT_SIDE

__all__ = ["CardText", "card_html", "card_text", "detail_html", "failure_text", "page_count", "page_label",
           "ready_text", "results_text", "status_text"]


@dataclass(frozen=True)
class CardText:
    """The words on one result card."""

    name: str
    score: str
    captions: tuple[str, ...]


def page_count(total: int, per_page: int) -> int:
    """Number of pages for `total` results (at least 1)."""
    return max(1, math.ceil(total / per_page))


def page_label(page: int, per_page: int, total: int) -> str:
    """'25–48 of 120' for page 1 (counting from 0) with 24 per page; 'no results' when empty."""
    if total == 0:
        return "no results"
    first = page * per_page + 1
    return f"{first}–{min(total, first + per_page - 1)} of {total}"


def ready_text(num_images: int) -> str:
    """The status line before the first search."""
    return f"{num_images} images indexed. Type a query and press Enter."


def status_text(total: int, elapsed_ms: float, *, like: str | None = None) -> str:
    """'24 results in 18 ms', with the image a "more like this" search started from."""
    noun = "result" if total == 1 else "results"
    text = f"{total} {noun} in {elapsed_ms:.0f} ms"
    return f"{text} (more like {like})" if like else text


def failure_text(failures: Sequence[tuple[str, str]]) -> str:
    """One sentence naming the images that could not be shown and why (the first reason)."""
    names = ", ".join(name for name, _ in failures[:3]) + (" …" if len(failures) > 3 else "")
    count = len(failures)
    noun = "image" if count == 1 else "images"
    return f"{count} {noun} could not be shown ({names}): {failures[0][1]}"


def card_text(hit: Any) -> CardText:
    """Name, rounded score and captions of one hit."""
    return CardText(PurePosixPath(hit.path).name, f"{hit.score:.3f}", tuple(hit.captions or ()))


def card_html(card: CardText) -> str:
    """A card's label: score and file name, first caption below, all captions as a tooltip."""
    tooltip = html.escape("\n".join(card.captions) or card.name, quote=True)
    caption = (f'<div style="font-size: 11px; line-height: 1.2; color: #555">'
               f'{html.escape(_shorten(card.captions[0], 90))}</div>') if card.captions else ""
    return (f'<div class="clipwidgets-card-text" title="{tooltip}" style="width: {DEFAULT_SIDE}px; '
            f'overflow: hidden"><b>{card.score}</b> '
            f'<span class="clipwidgets-name" style="font-size: 12px">{html.escape(card.name)}</span>'
            f"{caption}</div>")


def detail_html(hit: Any, full_path: str) -> str:
    """The detail view's text: file name, score, full path and every caption."""
    captions = "".join(f"<li>{html.escape(text)}</li>" for text in hit.captions or ())
    return (f"<h3>{html.escape(PurePosixPath(hit.path).name)}</h3>"
            f"<p><b>score</b> {hit.score:.4f}</p>"
            f'<p><b>path</b> <code style="word-break: break-all">{html.escape(full_path)}</code></p>'
            + (f"<p><b>captions</b></p><ul>{captions}</ul>" if captions else "<p>no captions</p>"))


def results_text(hits: Sequence[Any], total: int) -> str:
    """Deterministic plain text of a page of hits: rank, rounded score, relative path."""
    lines = [f"{len(hits)} of {total} results"]
    lines += [f"{hit.rank:>4}  {hit.score:.3f}  {hit.path}" for hit in hits]
    return "\n".join(lines)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

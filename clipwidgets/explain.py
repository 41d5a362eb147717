"""Why this result: the scores behind one hit and a heat map of the image regions that match.

- image score: cosine of the query vector and the image embedding (what the ranking used);
- best caption: the image's caption closest to the query and its cosine, where there are captions;
- parts: for `a + b - c` queries (and feedback marks), what each part adds to the score. The query
  vector is q = sum(w_i e_i) / ||sum(w_i e_i)||, so the score q.x splits exactly into the terms
  w_i (e_i.x) / ||sum(w_i e_i)||, which add up to it;
- heat map (occlusion): the image is cut into grid x grid cells; each cell in turn is painted over
  with the image's mean colour and the image re-encoded. How much that lowers the score says how much
  the cell matches. It needs only `encoder.encode_images`, so it works for any model; it costs
  grid**2 + 1 image encodings (37 for the default 6 x 6).
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import InvalidInputError
from .feedback import FeedbackWeights, feedback_rows, rocchio_parts
from .query import parse_negative, parse_query

__all__ = ["DEFAULT_GRID", "Explanation", "PartScore", "explain", "heatmap_overlay", "occlusion_map"]

DEFAULT_GRID = 6
_OVERLAY_RGB = (255, 30, 30)


@dataclass(frozen=True)
class PartScore:
    """One query part: its label, signed weight, own cosine with the image, and share of the score."""

    label: str
    weight: float
    cosine: float
    contribution: float


@dataclass(frozen=True)
class Explanation:
    """What `explain` found for one image; `heatmap` is (grid, grid) in 0..1 (1 = matters most)."""

    row: int
    path: str
    image_score: float
    parts: tuple[PartScore, ...]
    caption: str | None = None
    caption_score: float | None = None
    heatmap: np.ndarray | None = None

    def to_text(self) -> str:
        """Deterministic plain text of the scores (4 decimals)."""
        lines = [f"{self.path}: image score {self.image_score:.4f}"]
        if self.caption is not None:
            lines.append(f"best caption {self.caption_score:.4f}: {self.caption}")
        lines += [f"  {part.weight:+g} x {part.label}: cosine {part.cosine:.4f}, adds "
                  f"{part.contribution:+.4f}" for part in self.parts]
        return "\n".join(lines)

    def to_html(self) -> str:
        """The explanation as a small HTML table for the detail view."""
        rows = "".join(f"<tr><td>{part.weight:+g} × {html.escape(part.label)}</td>"
                       f"<td>{part.cosine:.4f}</td><td>{part.contribution:+.4f}</td></tr>"
                       for part in self.parts)
        caption = (f"<p><b>best caption</b> {self.caption_score:.4f}: {html.escape(self.caption)}</p>"
                   if self.caption is not None else "<p>no captions</p>")
        return (f'<div class="clipwidgets-explain"><p><b>image score</b> {self.image_score:.4f}</p>'
                f"{caption}<table><tr><th>part</th><th>cosine</th><th>adds</th></tr>{rows}</table></div>")

    def overlay_jpeg(self, image: Image.Image, *, max_side: int = 512) -> bytes:
        """The image with the heat map drawn over it, as JPEG bytes."""
        if self.heatmap is None:
            raise InvalidInputError("This explanation has no heat map: call explain(..., heatmap=True).")
        shown = heatmap_overlay(image, self.heatmap)
        shown.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        shown.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()


def explain(searcher: Any, hit: Any, query: Any, *, negative: str | None = None,
            positive: Iterable[Any] | None = None, negative_images: Iterable[Any] | None = None,
            feedback_weights: FeedbackWeights | None = None, heatmap: bool = True,
            grid: int = DEFAULT_GRID) -> Explanation:
    """Explain the score of `hit` (a Hit, a row or a path) for `query` (as given to `search`)."""
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= 32:
        raise InvalidInputError(f"grid={grid!r}: give the number of cells per side, 1 to 32 (e.g. 6).")
    row = searcher.index_of(getattr(hit, "index", hit))
    image = searcher.store.image_vectors([row])[0].astype(np.float64)
    raw = [(weight, _unit(searcher, value), label) for weight, value, label in _query_parts(query)]
    raw += [(part.weight, _unit(searcher, part.text), part.text) for part in parse_negative(negative)]
    summed = sum((weight * vector for weight, vector, _ in raw), np.zeros(len(image)))
    norm = float(np.linalg.norm(summed))
    if norm < 1e-6:
        raise InvalidInputError("The parts of the query cancel out: there is nothing to explain.")
    good, bad = feedback_rows(searcher, positive), feedback_rows(searcher, negative_images)
    store = searcher.store
    terms = rocchio_parts(summed / norm, store.image_vectors(good), store.image_vectors(bad),
                          feedback_weights)
    total = sum((weight * vector for weight, vector, _ in terms), np.zeros(len(image)))
    outer = float(np.linalg.norm(total))
    parts = []
    for weight, vector, label in terms:
        if label != "query":
            parts.append(_part(label, weight / outer, vector, image, weight=weight))
            continue
        alpha = weight / (norm * outer)
        parts += [_part(text, alpha * w, v, image, weight=w) for w, v, text in raw]
    query_vector = total / outer
    caption, caption_score = _best_caption(searcher, row, query_vector)
    heat = None
    if heatmap:
        from .images import load_image

        heat = occlusion_map(searcher.encoder, load_image(searcher.store.abspath(row)), query_vector,
                             grid=grid)
    return Explanation(row=row, path=searcher.store.image_paths()[row],
                       image_score=float(query_vector @ image),
                       parts=tuple(parts), caption=caption, caption_score=caption_score, heatmap=heat)


def occlusion_map(encoder: Any, image: Image.Image, query: np.ndarray, *, grid: int = DEFAULT_GRID
                  ) -> np.ndarray:
    """(grid, grid) heat in 0..1: how much painting each cell over lowers the image's score for `query`
    (all zeros when no cell lowers it)."""
    if encoder is None:
        raise InvalidInputError("The heat map re-encodes the image: give the Searcher an encoder "
                                "(load_model(...)), or call explain(..., heatmap=False).")
    image = image.convert("RGB")
    fill = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    width, height = image.size
    variants = [image]
    for i in range(grid):
        for j in range(grid):
            covered = image.copy()
            box = (j * width // grid, i * height // grid, (j + 1) * width // grid, (i + 1) * height // grid)
            covered.paste(fill, box)
            variants.append(covered)
    scores = np.asarray(encoder.encode_images(variants), dtype=np.float64) @ np.asarray(query, np.float64)
    drops = np.clip(scores[0] - scores[1:], 0, None).reshape(grid, grid)
    peak = float(drops.max())
    return drops / peak if peak > 0 else drops


def heatmap_overlay(image: Image.Image, heat: np.ndarray, *, strength: float = 0.6) -> Image.Image:
    """`image` with a red veil whose opacity follows `heat` (0..1), smoothly upsampled."""
    image = image.convert("RGB")
    levels = Image.fromarray((np.clip(heat, 0, 1) * 255 * strength).astype(np.uint8), "L")
    alpha = levels.resize(image.size, Image.Resampling.BILINEAR)
    veil = Image.new("RGB", image.size, _OVERLAY_RGB)
    return Image.composite(veil, image, alpha)


def _query_parts(query: Any) -> list[tuple[float, Any, str]]:
    if isinstance(query, str):
        return [(part.weight, part.text, part.text) for part in parse_query(query)]
    if isinstance(query, list):
        parts = []
        for item in query:
            weight, value = (item.weight, item.text) if hasattr(item, "weight") else item
            parts.append((float(weight), value, value if isinstance(value, str) else type(value).__name__))
        return parts
    return [(1.0, query, "image" if not isinstance(query, np.ndarray) or query.ndim != 1 else "vector")]


def _unit(searcher: Any, value: Any) -> np.ndarray:
    """The unit vector of one query part (text from the searcher's cache)."""
    if isinstance(value, str):
        return searcher.query_vector([(1.0, value)])[0].astype(np.float64)
    return searcher.query_vector(value)[0].astype(np.float64)


def _part(label: str, scale: float, vector: np.ndarray, image: np.ndarray, *, weight: float | None = None
          ) -> PartScore:
    cosine = float(vector @ image / max(float(np.linalg.norm(vector)), 1e-12))
    return PartScore(label=label, weight=scale if weight is None else weight, cosine=cosine,
                     contribution=float(scale * (vector @ image)))


def _best_caption(searcher: Any, row: int, query: np.ndarray) -> tuple[str | None, float | None]:
    owners = np.asarray(searcher.store.text_image_index())
    mine = np.flatnonzero(owners == row)
    if not len(mine):
        return None, None
    scores = searcher.store.text_embeddings()[mine].astype(np.float64) @ query
    best = int(np.argmax(scores))
    return searcher.store.texts()[int(mine[best])], float(scores[best])

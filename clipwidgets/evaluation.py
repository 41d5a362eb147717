"""Retrieval quality of a store with captions: Recall@K, ranks, agreement with human judgments.

Pure numpy on the embeddings a store already holds; no model is loaded. Ranks are 1-based and
pessimistic on ties (a wrong item scoring exactly as high as the right answer counts as ranked above
it), so degenerate embeddings cannot score well by accident.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .datasets.flickr8k import SOURCE_PREFIX, ExpertAnnotation, split_caption_id
from .errors import InvalidInputError
from .types import StoreReader

__all__ = [
    "ALL_IMAGES", "ANCHORS", "DirectionScores", "EvaluationReport", "Failure", "HumanAgreement", "KS",
    "evaluate_store", "failures", "human_agreement", "image_to_text_ranks", "kendall_tau_c", "recall_at_k",
    "split_rows", "text_to_image_ranks"
]

KS = (1, 5, 10)
ALL_IMAGES = "all"
_BLOCK_ELEMENTS = 8_000_000  # similarity entries computed at once (32 MB of float32)
# Published figures for ViT-B/32 with OpenAI's weights (docs/flickr8k.md gives the sources).
ANCHORS = {
    "Flickr8k test R@5 text->image (CLIP_benchmark)": 80.5,
    "Flickr8k test R@5 image->text (CLIP_benchmark)": 91.4,
    "Flickr8K-Expert Kendall tau-c x100 (CLIPScore)": 51.2,
}


# ------------------------------------------------------------------------------------------ the maths


def text_to_image_ranks(text_embeddings: np.ndarray, image_embeddings: np.ndarray,
                        text_image: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rank (1-based) of each text's own image among all images, by cosine similarity."""
    texts, images = _float32(text_embeddings), _float32(image_embeddings)
    targets = _targets(text_image, len(texts), len(images))
    ranks = np.empty(len(texts), dtype=np.int64)
    block = _rows_per_block(len(images))
    for start in range(0, len(texts), block):
        stop = min(start + block, len(texts))
        scores = texts[start:stop] @ images.T
        right = scores[np.arange(stop - start), targets[start:stop]]
        ranks[start:stop] = (scores >= right[:, None]).sum(axis=1)
    return ranks


def image_to_text_ranks(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                        text_image: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rank (1-based) of each image's best-placed own text among all texts (its other own texts
    do not count against it).

    Every image needs at least one text linked to it (InvalidInputError names the first that has none).
    """
    images, texts = _float32(image_embeddings), _float32(text_embeddings)
    targets = _targets(text_image, len(texts), len(images))
    uncaptioned = np.setdiff1d(np.arange(len(images)), targets)
    if uncaptioned.size:
        raise InvalidInputError(f"Image {int(uncaptioned[0])} has no text linked to it "
                                f"({uncaptioned.size} such images); image-to-text ranks need one.")
    ranks = np.empty(len(images), dtype=np.int64)
    block = _rows_per_block(len(texts))
    for start in range(0, len(images), block):
        stop = min(start + block, len(images))
        scores = images[start:stop] @ texts.T
        own = targets[None, :] == np.arange(start, stop)[:, None]
        best = np.where(own, scores, -np.inf).max(axis=1)
        ranks[start:stop] = 1 + ((scores >= best[:, None]) & ~own).sum(axis=1)
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose right answer is within the top `k`."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise InvalidInputError("recall_at_k needs at least one rank.")
    return float(100.0 * np.mean(ranks <= k))


def kendall_tau_c(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Stuart's tau-c between two paired samples (the variant the CLIPScore paper reports).

    tau_c = 2 (P - Q) / (n^2 (m - 1) / m), with P - Q the concordant minus discordant pairs and m the
    smaller number of distinct values of x and y. NaN when either sample has a single value.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidInputError(f"kendall_tau_c needs two 1-D samples of equal length, got {x.shape} "
                                f"and {y.shape}.")
    n = len(x)
    m = min(len(np.unique(x)), len(np.unique(y)))
    if m < 2:
        return math.nan
    twice_s = 0.0  # every unordered pair is counted twice over the full matrix
    block = _rows_per_block(n) // 4
    for start in range(0, n, block):
        dx = np.sign(x[start:start + block, None] - x[None, :])
        dy = np.sign(y[start:start + block, None] - y[None, :])
        twice_s += float((dx * dy).sum())
    return twice_s / (n * n * (m - 1) / m)


# ------------------------------------------------------------------------------------ on a store


@dataclass(frozen=True)
class DirectionScores:
    """Recall@K (percent), median and mean rank of one retrieval direction."""

    queries: int
    recall: dict[int, float]
    median_rank: float
    mean_rank: float

    @classmethod
    def from_ranks(cls, ranks: np.ndarray, ks: Sequence[int] = KS) -> DirectionScores:
        return cls(queries=int(ranks.size), recall={k: recall_at_k(ranks, k) for k in ks},
                   median_rank=float(np.median(ranks)), mean_rank=float(np.mean(ranks)))


@dataclass(frozen=True)
class HumanAgreement:
    """Kendall tau-c (x100) between image-caption cosine and expert scores (Flickr8K-Expert).

    `tau_c` follows CLIPScore: pairs whose caption is one of the image's own captions are left
    out and each of the three expert scores is a judgment. `tau_c_mean` uses every pair against
    the mean of its three scores.
    """

    tau_c: float
    judgments: int
    tau_c_mean: float
    pairs: int
    missing: int


@dataclass(frozen=True)
class EvaluationReport:
    """What `evaluate_store` measured."""

    split: str
    images: int
    captions: int
    model: str
    text_to_image: DirectionScores
    image_to_text: DirectionScores
    agreement: HumanAgreement | None = None
    anchors: dict[str, float] = field(default_factory=lambda: dict(ANCHORS))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (Recall@K keys are strings such as "R@5")."""
        result = asdict(self)
        for direction in ("text_to_image", "image_to_text"):
            result[direction]["recall"] = {f"R@{k}": v for k, v in result[direction]["recall"].items()}
        return result

    def format_table(self) -> str:
        """A plain-text table for the terminal or a notebook."""
        ks = list(self.text_to_image.recall)
        header = (f"{'direction':<15}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
                  + f"{'median':>8}{'mean':>8}")
        lines = [f"Flickr8k retrieval on split {self.split!r}: {self.images:,} images, {self.captions:,} "
                 f"captions; model {self.model}", header]
        for label, scores in (("text -> image", self.text_to_image), ("image -> text", self.image_to_text)):
            lines.append(f"{label:<15}" + "".join(f"{scores.recall[k]:>8.1f}" for k in ks)
                         + f"{scores.median_rank:>8.1f}{scores.mean_rank:>8.1f}")
        if self.agreement is not None:
            a = self.agreement
            lines.append(f"human agreement (Flickr8K-Expert): Kendall tau-c x100 {a.tau_c:.1f} over "
                         f"{a.judgments:,} judgments (CLIPScore protocol); {a.tau_c_mean:.1f} over "
                         f"{a.pairs:,} pairs against the mean expert score"
                         + (f"; {a.missing:,} annotations not in the store" if a.missing else ""))
        lines.append("published for ViT-B/32 openai: "
                     + "; ".join(f"{name} {value}" for name, value in self.anchors.items()))
        return "\n".join(lines)


def split_rows(store: StoreReader, split: str = "test") -> np.ndarray:
    """Image rows of a named subset of the store (or every image for split="all")."""
    if split == ALL_IMAGES:
        return np.arange(store.num_images, dtype=np.int64)
    subsets = store.subsets()
    if split not in subsets:
        known = ", ".join(sorted(subsets)) or "none"
        raise InvalidInputError(f"Store {store.path} has no split {split!r} (known: {known}; 'all' takes "
                                "every image). Index Flickr8k with `clipwidgets flickr8k index` to record "
                                "the train, dev and test splits.")
    return np.asarray(subsets[split], dtype=np.int64)


def evaluate_store(store: StoreReader, *, split: str = "test", ks: Sequence[int] = KS,
                   expert_annotations: Sequence[ExpertAnnotation] | None = None,
                   source_prefix: str = SOURCE_PREFIX) -> EvaluationReport:
    """Text-to-image and image-to-text retrieval over one split's captioned images and their captions.

    Captions are the store's texts whose source starts with `source_prefix` and whose image is in
    the split. With `expert_annotations`, the report also holds the human agreement.
    """
    rows, texts, text_image = _split_captions(store, split, source_prefix)
    images = _float32(store.image_embeddings()[rows])
    captions = _float32(store.text_embeddings()[texts])
    model = f"{store.model_meta.get('name')}/{store.model_meta.get('pretrained')}"
    return EvaluationReport(
        split=split, images=len(rows), captions=len(texts), model=model,
        text_to_image=DirectionScores.from_ranks(text_to_image_ranks(captions, images, text_image), ks),
        image_to_text=DirectionScores.from_ranks(image_to_text_ranks(images, captions, text_image), ks),
        agreement=None if expert_annotations is None else human_agreement(store, expert_annotations),
    )


def human_agreement(store: StoreReader, annotations: Sequence[ExpertAnnotation], *,
                    source_prefix: str = SOURCE_PREFIX) -> HumanAgreement:
    """Kendall tau-c between the cosine of each annotated (image, caption) pair and the expert scores.

    Caption ids (`<image>.jpg#<n>`) are looked up among the store's texts by their image and the
    source tag `<source_prefix><n>`; annotations whose image or caption is not in the store are counted
    in `missing`.
    """
    paths = store.image_paths()
    row_of = {path: i for i, path in enumerate(paths)}
    text_of = {}
    for j, (image, source) in enumerate(zip(store.text_image_index(), store.text_sources(), strict=True)):
        if image >= 0 and source.startswith(source_prefix) and source[len(source_prefix):].isdigit():
            text_of[(paths[image], int(source[len(source_prefix):]))] = j
    texts = store.texts()
    image_embeddings, text_embeddings = store.image_embeddings(), store.text_embeddings()
    cosines: list[float] = []
    means: list[float] = []
    per_rater_cosines: list[float] = []
    per_rater_scores: list[int] = []
    missing = 0
    for annotation in annotations:
        image_row = row_of.get(annotation.image)
        text_row = text_of.get(split_caption_id(annotation.caption_id))
        if image_row is None or text_row is None:
            missing += 1
            continue
        cosine = float(_float32(image_embeddings[image_row]) @ _float32(text_embeddings[text_row]))
        cosines.append(cosine)
        means.append(annotation.mean_score)
        own = {" ".join(text.split()) for text in store.captions(image_row)}
        if " ".join(texts[text_row].split()) not in own:
            per_rater_cosines.extend([cosine] * len(annotation.scores))
            per_rater_scores.extend(annotation.scores)
    if not cosines:
        raise InvalidInputError(f"None of the {len(annotations)} expert annotations refers to an image and "
                                f"caption of store {store.path}; index Flickr8k with its captions first.")
    return HumanAgreement(tau_c=100.0 * kendall_tau_c(per_rater_cosines, per_rater_scores),
                          judgments=len(per_rater_scores),
                          tau_c_mean=100.0 * kendall_tau_c(cosines, means), pairs=len(cosines),
                          missing=missing)


@dataclass(frozen=True)
class Failure:
    """A caption whose image was not retrieved first: the right image beside what came first."""

    caption: str
    source: str
    ground_truth: str
    ground_truth_rank: int
    ground_truth_score: float
    retrieved: list[tuple[str, float]]


def failures(store: StoreReader, split: str = "test", *, limit: int = 20, k: int = 5,
             source_prefix: str = SOURCE_PREFIX) -> list[Failure]:
    """Text-to-image failures of a split, worst ranked first; paths are absolute image paths."""
    if limit < 1 or k < 1:
        raise InvalidInputError(f"failures needs limit >= 1 and k >= 1, got limit={limit}, k={k}.")
    rows, texts, text_image = _split_captions(store, split, source_prefix)
    images = _float32(store.image_embeddings()[rows])
    captions = _float32(store.text_embeddings()[texts])
    ranks = text_to_image_ranks(captions, images, text_image)
    worst = [int(i) for i in np.argsort(-ranks, kind="stable") if ranks[i] > 1][:limit]
    all_texts, sources = store.texts(), store.text_sources()
    result = []
    for i in worst:
        scores = images @ captions[i]
        top = np.argsort(-scores, kind="stable")[:k]
        result.append(Failure(
            caption=all_texts[texts[i]], source=sources[texts[i]],
            ground_truth=str(store.abspath(int(rows[text_image[i]]))), ground_truth_rank=int(ranks[i]),
            ground_truth_score=float(scores[text_image[i]]),
            retrieved=[(str(store.abspath(int(rows[j]))), float(scores[j])) for j in top]))
    return result


def _split_captions(store: StoreReader, split: str,
                    source_prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of the split's captioned images, text rows of their captions, each caption's position in
    the image rows)."""
    in_split = np.zeros(store.num_images, dtype=bool)
    in_split[split_rows(store, split)] = True
    linked = np.asarray(store.text_image_index(), dtype=np.int64)
    tagged = np.array([source.startswith(source_prefix) for source in store.text_sources()], dtype=bool)
    texts = np.flatnonzero(tagged & (linked >= 0) & in_split[np.clip(linked, 0, None)])
    rows = np.unique(linked[texts])
    position = np.full(store.num_images, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    if texts.size == 0:
        raise InvalidInputError(f"Split {split!r} of store {store.path} has no captions tagged "
                                f"{source_prefix!r}; index Flickr8k with its "
                                "captions (`clipwidgets flickr8k index`) before evaluating.")
    return rows, texts, position[linked[texts]]


def _targets(text_image: Sequence[int] | np.ndarray, texts: int, images: int) -> np.ndarray:
    targets = np.asarray(text_image, dtype=np.int64)
    if targets.shape != (texts,):
        raise InvalidInputError(f"Got {texts} texts but {targets.size} image links; give one per text.")
    if targets.size and (targets.min() < 0 or targets.max() >= images):
        raise InvalidInputError(f"Image links must lie in 0..{images - 1}; "
                                f"got {targets.min()}..{targets.max()}.")
    return targets


def _rows_per_block(columns: int) -> int:
    return max(4, _BLOCK_ELEMENTS // max(columns, 1))


def _float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)

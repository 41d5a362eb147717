"""EmbeddingMap: the whole collection as a 2-D scatter (jupyter-scatter), linked to a SearchPanel.

- Projection: PCA by default (blocked; axes from up to 200,000 evenly spaced rows, every row
  projected: 1M x 512 in seconds), UMAP with method="umap" when `umap-learn` is installed
  (`pip install "clipwidgets[map]"`).
- Colour by "split" (the store's subsets, e.g. Flickr8k's train/dev/test), "cluster" (k-means on the
  embeddings) or "score" (cosine with the panel's current query).
- Linked to a panel: the panel's current page is drawn large on the map; a lasso (toolbar) or
  box selection on the map shows those images in the panel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["COLOR_BY", "METHODS", "PCA_SAMPLE", "EmbeddingMap", "kmeans", "pca_2d", "project"]

METHODS = ("pca", "umap", "auto")
COLOR_BY = ("split", "cluster", "score")
_BLOCK = 65_536
PCA_SAMPLE = 200_000
_KMEANS_SAMPLE = 50_000
_NO_SPLIT = "(none)"


def pca_2d(matrix: np.ndarray, *, sample: int = PCA_SAMPLE) -> np.ndarray:
    """(N, 2) float32: the rows of `matrix` on its two main centred directions, a block at a time.

    The directions come from every row up to `sample` rows, else from `sample` evenly spaced rows
    (two axes are estimated as well from 200,000 rows as from millions); every row is projected.
    """
    count, dim = matrix.shape
    fitted = matrix if count <= sample else matrix[np.linspace(0, count - 1, sample).astype(np.int64)]
    total = np.zeros(dim)
    moment = np.zeros((dim, dim))
    for first in range(0, len(fitted), _BLOCK):
        block = np.asarray(fitted[first:first + _BLOCK], dtype=np.float32)
        total += block.sum(axis=0, dtype=np.float64)
        moment += (block.T @ block).astype(np.float64)
    mean = total / len(fitted)
    covariance = moment / len(fitted) - np.outer(mean, mean)
    vectors = _eigenvectors(covariance)
    axes = vectors[:, ::-1][:, :2]
    axes *= np.where(axes[np.abs(axes).argmax(axis=0), [0, 1]] < 0, -1, 1)  # a fixed sign per axis
    axes = axes.astype(np.float32)
    out = np.empty((count, 2), dtype=np.float32)
    shift = (mean.astype(np.float32) @ axes)
    for first in range(0, count, _BLOCK):
        out[first:first + _BLOCK] = np.asarray(matrix[first:first + _BLOCK], dtype=np.float32) @ axes - shift
    return out


def _eigenvectors(symmetric: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns, ascending eigenvalues) on one thread: a 512 x 512 problem takes ~0.1 s
    that way, where multi-threaded LAPACK took 4-8 s on a busy 2-core machine (measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(torch.from_numpy(symmetric)).eigenvectors.numpy()
    finally:
        torch.set_num_threads(threads)


def project(matrix: np.ndarray, method: str = "pca", *, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the method used ("auto": UMAP when installed, else PCA)."""
    if method not in METHODS:
        raise InvalidInputError(f"method={method!r}: use one of {', '.join(METHODS)}.")
    if method == "pca" or len(matrix) < 3:
        return pca_2d(matrix), "pca"
    try:
        import umap
    except ImportError as error:
        if method == "auto":
            return pca_2d(matrix), "pca"
        raise InvalidInputError("method='umap' needs umap-learn: pip install \"clipwidgets[map]\" (or use "
                                "method='pca').") from error
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(matrix) - 1), random_state=seed,
                        metric="cosine")
    return np.asarray(reducer.fit_transform(np.asarray(matrix, dtype=np.float32)), dtype=np.float32), "umap"


def kmeans(matrix: np.ndarray, clusters: int, *, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """A cluster number per row (k-means on up to 50,000 sampled rows, then every row assigned)."""
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise InvalidInputError(f"clusters={clusters!r}: give a number of clusters >= 1, e.g. 8.")
    rng = np.random.default_rng(seed)
    count = len(matrix)
    sample = np.asarray(matrix[np.sort(rng.choice(count, min(count, _KMEANS_SAMPLE), replace=False))],
                        dtype=np.float32)
    clusters = min(clusters, len(sample))
    centres = sample[rng.choice(len(sample), clusters, replace=False)]
    previous = None
    for _ in range(iterations):
        nearest = _nearest(sample, centres)
        if previous is not None and np.array_equal(nearest, previous):
            break  # converged: the centres would not move
        previous = nearest
        for number in range(clusters):
            members = sample[nearest == number]
            if len(members):
                centres[number] = members.mean(axis=0)
    return np.concatenate([_nearest(np.asarray(matrix[first:first + _BLOCK], dtype=np.float32), centres)
                           for first in range(0, count, _BLOCK)])


def _nearest(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distances = (centres**2).sum(axis=1)[None, :] - 2 * rows @ centres.T
    return np.argmin(distances, axis=1)


class EmbeddingMap:
    """A 2-D map of a store's images. `store` is an EmbeddingStore, a Searcher or a SearchPanel (then
    the map is linked to it); `widget` is the jupyter-scatter view (display the map or `map.widget`)."""

    def __init__(self, store: Any, *, method: str = "pca", color_by: str = "split", clusters: int = 8,
                 height: int = 420, seed: int = 0) -> None:
        from .searcher import Searcher
        from .widgets import SearchPanel

        self.panel: Any = None
        self.store: Any = store
        if isinstance(store, SearchPanel):
            if store.searcher is None:
                raise InvalidInputError(f"The panel has no store to map: {store.error}")
            self.panel, self.store = store, store.searcher.store
        elif isinstance(store, Searcher):
            self.store = store.store
        self._matrix = self.store.image_embeddings()
        if len(self._matrix) == 0:
            raise InvalidInputError(f"The store {self.store.path} has no images to map: index a folder "
                                    "first.")
        self.coords, self.method = project(self._matrix, method, seed=seed)
        self._clusters, self._seed = clusters, seed
        self._cluster_of: np.ndarray | None = None
        self.color_by = ""
        self._setting_selection = False
        try:
            import jscatter
        except ImportError as error:
            raise InvalidInputError("The map is drawn with jupyter-scatter: pip install "
                                    '"clipwidgets[map]".') from error
        self.scatter = jscatter.Scatter(x=self.coords[:, 0], y=self.coords[:, 1], height=height, axes=False)
        self.scatter.size(by=np.zeros(len(self.coords)), map=[4, 14], norm=(0, 1))
        self.highlighted: np.ndarray = np.zeros(0, dtype=np.int64)
        self.color(color_by)
        self.widget = self.scatter.widget
        self.widget.observe(self._on_selection, names="selection")
        if self.panel is not None:
            self.panel.on_results(lambda panel: self._on_results())

    def color(self, by: str) -> None:
        """Colour the points by "split", "cluster" or "score" (the panel's current query)."""
        if by not in COLOR_BY:
            raise InvalidInputError(f"color_by={by!r}: use one of {', '.join(COLOR_BY)}.")
        if by == "split":
            names = np.full(len(self.coords), _NO_SPLIT, dtype=object)
            for name, rows in sorted(self.store.subsets().items()):
                names[np.asarray(rows, dtype=np.int64)] = name
            self.scatter.color(by=names.astype(str), map="auto")
        elif by == "cluster":
            if self._cluster_of is None:
                self._cluster_of = kmeans(self._matrix, self._clusters, seed=self._seed)
            self.scatter.color(by=self._cluster_of.astype(str), map="auto")
        else:
            scores = self.scores()
            low, high = float(scores.min()), float(scores.max())
            self.scatter.color(by=scores, map="viridis", norm=(low, high if high > low else low + 1))
        self.color_by = by

    def scores(self) -> np.ndarray:
        """Cosine of every image with the linked panel's current query (zeros without one)."""
        vector = self.panel.query_vector() if self.panel is not None else None
        if vector is None:
            return np.zeros(len(self.coords), dtype=np.float32)
        return np.concatenate([np.asarray(self._matrix[first:first + _BLOCK], dtype=np.float32) @ vector
                               for first in range(0, len(self._matrix), _BLOCK)])

    def highlight(self, rows: Any) -> None:
        """Draw `rows` large (the panel's current page when linked)."""
        sizes = np.zeros(len(self.coords), dtype=np.float32)
        self.highlighted = np.asarray(sorted(int(row) for row in rows), dtype=np.int64)
        sizes[self.highlighted] = 1
        self.scatter.size(by=sizes, map=[4, 14], norm=(0, 1))

    def select(self, rows: Any) -> None:
        """Select `rows` on the map, as a lasso would (the linked panel shows them)."""
        self.scatter.selection(np.asarray(sorted(int(row) for row in rows), dtype=np.int64))

    def selection(self) -> np.ndarray:
        """Rows selected on the map."""
        chosen = self.widget.selection
        return np.zeros(0, dtype=np.int64) if chosen is None else np.asarray(chosen, dtype=np.int64)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _on_results(self) -> None:
        self.highlight([hit.index for hit in self.panel.results])
        if self.color_by == "score":
            self.color("score")

    def _on_selection(self, change: dict) -> None:
        rows = change.get("new")
        if self.panel is None or rows is None or len(rows) == 0 or self._setting_selection:
            return
        self._setting_selection = True
        try:
            self.panel.show_rows(np.asarray(rows, dtype=np.int64))
        finally:
            self._setting_selection = False

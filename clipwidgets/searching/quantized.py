"""Int8Rows: an int8 copy of a small store's vectors for the fast pass, with a proven error bound.

Value x[r, i] is approximated by s[r] * d[i] * v[r, i] with v an int8 in [-127, 127]: d[i] is the
largest |x[:, i]| (so the few large dimensions of CLIP embeddings get a scale of their own) and s[r]
maps row r's largest |x[r, i] / d[i]| to 127. A query q is scored as q'[i] = q[i] * d[i] rounded to
an int16 w[i] with scale t (t * w = q' - f), so the kernel sums int8 x int16 exactly in int32
(native.Int8Matrix; a byte per value: half the float16 kernel's reads). Then

    q . x[r] - fast[r] = q . e[r] + s[r] * (v[r] . f)        with e[r] = x[r] - s[r] * d * v[r]

and by Cauchy-Schwarz the error is at most |q| max_r |e[r]| + max_r s[r] |v[r]| * |f|, plus
float32 rounding of the final scaling: `eps`, which the exact re-scoring relies on (index.Scan).
|e[r]| is computed in float64 when the copy is made. Unit vectors of 512 random values give eps
about 0.01, so the band re-scored in float64 is ~0.02 below the k-th fast score.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from . import native

__all__ = ["Int8Rows"]

_CHUNK = 4096  # rows widened to float32 at a time
_ROUNDING = 1 + 1e-9  # float64 rounding of the error norms (relative ~1e-15), generously


class Int8Rows:
    """The int8 copy of a rows x dim matrix and the constants of its error bound."""

    def __init__(self, matrix: np.ndarray) -> None:
        rows, dim = matrix.shape
        ranges = np.zeros(dim, dtype=np.float32)
        for _, chunk in _float32_chunks(matrix):
            native.ranges(chunk, ranges)
        dim_scales = np.where(ranges > 0, ranges, np.float32(1))  # d
        values = np.empty((rows, dim), dtype=np.int8)  # v
        row_scales = np.empty(rows, dtype=np.float32)  # s
        bounds = np.zeros(2)  # largest |e[r]|**2, largest s[r] * |v[r]|
        for first, chunk in _float32_chunks(matrix):
            part = slice(first, first + len(chunk))
            native.quantize8(chunk, dim_scales, values[part], row_scales[part], bounds)
        self.error, self.length = math.sqrt(bounds[0]) * _ROUNDING, bounds[1] * _ROUNDING
        self.kernel = native.Int8Matrix(values, row_scales, dim_scales)  # holds the arrays
        # largest |w[i]| with 127 * |w| * dim below 2**31, so the int32 sums cannot overflow
        self.limit = min(32767, (2**31 - 1) // (127 * max(1, dim)))

    def scores(self, query: np.ndarray, *, threads: int, fp32_eps: float) -> tuple[np.ndarray, float]:
        """float32 fast scores of every row for `query` (a unit vector in search), and their error
        bound, with `fp32_eps` per unit of |q| for the float32 rounding of the final scaling."""
        vector = np.ascontiguousarray(query, dtype=np.float32)
        rounded, step, residual, norm = self.kernel.query(vector, self.limit)  # w, t, |f|, |q|
        eps = (norm * self.error + self.length * residual) * _ROUNDING + fp32_eps * max(1.0, norm)
        return self.kernel.scores(rounded, step, threads=threads), eps


def _float32_chunks(matrix: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 copy of the rows from there) for runs of _CHUNK rows, in one reused buffer
    (float16 widened by torch, whose conversion is vectorised; numpy's is not)."""
    from .kernels import tensor  # kernels imports this module

    buffer = torch.empty((min(_CHUNK, len(matrix)), matrix.shape[1]), dtype=torch.float32)
    for first in range(0, len(matrix), _CHUNK):
        part = tensor(np.ascontiguousarray(matrix[first:first + _CHUNK]))
        out = buffer[:len(part)]
        out.copy_(part)
        yield first, out.numpy()

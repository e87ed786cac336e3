"""Streamed float64 arithmetic on gate blocks: the numbers behind `stats` and `plot`.

A block is never read whole unless it is small or stored with a transform (then it is read whole
anyway, as every command does): its values arrive in row slices (`lockfile.iter_block_rows`) or
column slices (`lockfile.iter_block_cols`) of about `lockfile.CHUNK_BYTES` stored bytes,
dequantized and converted to float64 one slice at a time. Memory: a few slices, plus for the
spectral norms of large matrices the Gram matrices of their smaller side (at most two at a time,
each ≤ GRAM_MAX_BYTES: `stats` sums the gates' U_g U_gᵀ into the whole kernel's U Uᵀ).

Matrices. A block, or several blocks side by side (the whole recurrent kernel `U = [U_i U_f U_c U_o]`),
is seen as one 2-D matrix (`MatrixView`): all axes but the last are rows, so a ConvLSTM kernel
`(k..., filters_in, filters_out)` is the `(k...·filters_in, filters_out)` matrix that multiplies an
im2col patch.

Spectral norms (`spectral_norm`), largest singular value σ₁:

* up to `EXACT_MAX_ELEMENTS` elements: `np.linalg.norm(M, 2)` on the matrix read whole (LAPACK SVD);
* otherwise Lanczos with full reorthogonalisation on the Gram matrix of the smaller side,
  `G = M Mᵀ` (accumulated from column slices) or `G = Mᵀ M` (from row slices), held in memory when
  its side d has d² · 8 bytes ≤ `GRAM_MAX_BYTES`; beyond that on the operator v ↦ Mᵀ(M v),
  one streamed pass over M per iteration. σ₁² is the largest eigenvalue of either.
  Lanczos stops when the residual bound of its largest Ritz value θ is ‖G y − θ y‖ ≤ 2·RTOL·θ:
  then an eigenvalue of G lies within 2·RTOL·θ of θ, so √θ is within RTOL (relative) of a singular
  value; started from a seeded random vector, that is σ₁. `SPECTRAL_RTOL` = 1e-6 is the stated
  tolerance; in practice the error is far smaller (it shrinks with the square of the residual).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from lstm_inspect.cells import Block
from lstm_inspect.commands.lockfile import block_row_range, iter_block_cols, iter_block_rows
from lstm_inspect.errors import CorruptModelError

EXACT_MAX_ELEMENTS = 1 << 20  # np.linalg.norm(M, 2) up to here (a 1024×1024 gate, a 512-unit LSTM's U)
GRAM_MAX_BYTES = 256 << 20    # a Gram matrix up to 5792×5792 float64 is held in memory
SPECTRAL_RTOL = 1e-6          # stated relative tolerance of the iterative spectral norms
LANCZOS_MAX_ITERATIONS = 1000
SPECTRUM_MAX_SIDE = 4096      # `plot`: full singular-value spectra up to this smaller side


def as_float64(chunk: np.ndarray, what: str) -> np.ndarray:
    """Values of a slice as float64; a tensor that does not hold real numbers is a corrupt model."""
    chunk = np.asarray(chunk)
    if chunk.dtype.kind not in "fiub":
        raise CorruptModelError(f"{what} does not hold real numbers (dtype {chunk.dtype})")
    return chunk.astype(np.float64, copy=False)


# ------------------------------------------------------------------------------------------------
# Moments of a block: one streamed pass

@dataclass(frozen=True)
class Moments:
    """Statistics of a block's values. mean, std (population), min, max and norm (Frobenius) are
    over the finite values (None when there are none); zeros, nan and inf count all values."""

    shape: tuple[int, ...]
    size: int
    finite: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    norm: float | None
    zeros: int
    nan: int
    inf: int

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.size if self.size else 0.0

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max, "norm": self.norm, "zero_fraction": self.zero_fraction,
                "nan": self.nan, "inf": self.inf, "size": self.size, "finite": self.finite}


class MomentsAccumulator:
    """Chan et al.'s pairwise update: count, mean and sum of squared deviations merge exactly per
    slice, so the streamed std is as accurate as NumPy's two-pass one."""

    def __init__(self) -> None:
        self.size = self.finite = self.zeros = self.nan = self.inf = 0
        self.mean = self.m2 = self.sumsq = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, values: np.ndarray) -> None:
        values = values.reshape(-1)
        self.size += values.size
        self.zeros += int(np.count_nonzero(values == 0))
        finite_mask = np.isfinite(values)
        good = values if finite_mask.all() else values[finite_mask]
        nan = int(np.count_nonzero(np.isnan(values)))
        self.nan += nan
        self.inf += values.size - good.size - nan
        if good.size == 0:
            return
        n_b = good.size
        mean_b = float(good.mean())
        m2_b = float(np.sum(np.square(good - mean_b)))
        n = self.finite + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.finite * n_b / n
        self.finite = n
        self.sumsq += float(np.dot(good, good))
        self.low = min(self.low, float(good.min()))
        self.high = max(self.high, float(good.max()))

    def result(self, shape: tuple[int, ...]) -> Moments:
        some = self.finite > 0
        return Moments(shape=tuple(shape), size=self.size, finite=self.finite,
                       mean=self.mean if some else None,
                       std=math.sqrt(self.m2 / self.finite) if some else None,
                       min=self.low if some else None, max=self.high if some else None,
                       norm=math.sqrt(self.sumsq) if some else None,
                       zeros=self.zeros, nan=self.nan, inf=self.inf)


def block_moments(block: Block) -> Moments:
    acc = MomentsAccumulator()
    for chunk in iter_block_rows(block, dequantize=True):
        acc.add(as_float64(chunk, f"block {block.name}"))
    return acc.result(block.shape)


# ------------------------------------------------------------------------------------------------
# Blocks as 2-D matrices

@dataclass(frozen=True)
class MatrixView:
    """Blocks of equal leading shape side by side, as one 2-D float64 matrix read in slices."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        lead = {b.shape[:-1] for b in self.blocks}
        if len(lead) != 1 or any(len(b.shape) < 2 for b in self.blocks):
            raise ValueError(f"blocks {[b.name for b in self.blocks]} do not share their rows")

    @property
    def rows(self) -> int:
        return math.prod(self.blocks[0].shape[:-1])

    @property
    def cols(self) -> int:
        return sum(b.shape[-1] for b in self.blocks)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def _matrix(self, block: Block, values: np.ndarray) -> np.ndarray:
        """Values of (a slice of) a block as rows × columns: every axis but the last is rows."""
        values = as_float64(values, f"block {block.name}")
        return values.reshape(-1, values.shape[-1] if values.ndim else 1)

    def whole(self) -> np.ndarray:
        parts = [self._matrix(b, b.read()) for b in self.blocks]
        return parts[0] if len(parts) == 1 else np.hstack(parts)

    def row_slices(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of the matrix, all blocks' columns side by side."""
        if len(self.blocks) > 1 and not _same_row_slicing(self.blocks):
            yield 0, self.whole()
            return
        row = 0
        iterators = [iter_block_rows(b, dequantize=True) for b in self.blocks]
        for parts in zip(*iterators):
            mats = [self._matrix(b, p) for b, p in zip(self.blocks, parts)]
            band = mats[0] if len(mats) == 1 else np.hstack(mats)
            yield row, band
            row += band.shape[0]

    def col_slices(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first column, columns) of the matrix, block after block."""
        offset = 0
        for b in self.blocks:
            for start, values in iter_block_cols(b):
                yield offset + start, self._matrix(b, values)
            offset += b.shape[-1]

    def rmatmul(self, x: np.ndarray) -> np.ndarray:
        """x @ M for x (..., rows), reading M in row slices."""
        out = np.zeros(x.shape[:-1] + (self.cols,))
        for start, band in self.row_slices():
            out += x[..., start:start + band.shape[0]] @ band
        return out


def _same_row_slicing(blocks: Sequence[Block]) -> bool:
    """Whether iter_block_rows cuts every block at the same rows (same shape, dtype, sliceability)."""
    first = blocks[0]
    key = (first.shape, first.source.dtype, block_row_range(first) is not None)
    return all((b.shape, b.source.dtype, block_row_range(b) is not None) == key for b in blocks)


class StreamedMatrix:
    """A block for the reference cells that computes `x @ M` from row slices, never held whole.

    NumPy defers `x @ StreamedMatrix` to `__rmatmul__` because `__array_ufunc__` is None
    (reference.is_lazy_matrix)."""

    __array_ufunc__ = None

    def __init__(self, block: Block) -> None:
        self.view = MatrixView((block,))
        self.shape = block.shape

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        return self.view.rmatmul(np.asarray(x, dtype=np.float64))


# ------------------------------------------------------------------------------------------------
# Spectral norm

@dataclass(frozen=True)
class SpectralNorm:
    value: float | None
    method: str  # "svd", "gram-lanczos", "lanczos", or "none" (non-finite values)
    iterations: int = 0
    residual: float | None = None  # Lanczos: the residual bound of θ = σ², relative to θ
    converged: bool = True

    def to_dict(self) -> dict:
        out: dict = {"method": self.method}
        if self.method in ("gram-lanczos", "lanczos"):
            out.update(iterations=self.iterations, relative_residual=self.residual, converged=self.converged)
        return out


def spectral_norm(view: MatrixView, *, exact_max: int | None = None, gram_max_bytes: int | None = None,
                  rtol: float = SPECTRAL_RTOL) -> SpectralNorm:
    """σ₁ of the matrix, by the method its size calls for (see the module docstring)."""
    exact_max = EXACT_MAX_ELEMENTS if exact_max is None else exact_max
    gram_max_bytes = GRAM_MAX_BYTES if gram_max_bytes is None else gram_max_bytes
    if view.size == 0:
        return SpectralNorm(0.0, "svd")
    if view.size <= exact_max:
        return SpectralNorm(float(np.linalg.norm(view.whole(), 2)), "svd")
    side = min(view.rows, view.cols)
    if side * side * 8 <= gram_max_bytes:
        return norm_from_gram(gram(view), rtol)

    def normal_matvec(v: np.ndarray) -> np.ndarray:
        out = np.zeros(view.cols)
        for _, band in view.row_slices():
            out += band.T @ (band @ v)
        return out
    theta, k, residual, converged = lanczos_largest(normal_matvec, view.cols, rtol)
    return SpectralNorm(math.sqrt(max(theta, 0.0)), "lanczos", k, residual, converged)


def norm_from_gram(g: np.ndarray, rtol: float = SPECTRAL_RTOL) -> SpectralNorm:
    """σ₁ = √λ_max of a Gram matrix held in memory, by Lanczos."""
    theta, k, residual, converged = lanczos_largest(lambda v: g @ v, g.shape[0], rtol)
    return SpectralNorm(math.sqrt(max(theta, 0.0)), "gram-lanczos", k, residual, converged)


def uses_row_gram(view: MatrixView, exact_max: int | None = None, gram_max_bytes: int | None = None) -> bool:
    """Whether spectral_norm would take σ₁ from the row Gram matrix M Mᵀ (a matrix no taller than wide,
    too large for the exact SVD, whose rows² float64 fit in gram_max_bytes)."""
    exact_max = EXACT_MAX_ELEMENTS if exact_max is None else exact_max
    gram_max_bytes = GRAM_MAX_BYTES if gram_max_bytes is None else gram_max_bytes
    return view.size > exact_max and view.rows <= view.cols and view.rows ** 2 * 8 <= gram_max_bytes


def gram(view: MatrixView, band: int = 512, rows: bool | None = None) -> np.ndarray:
    """M Mᵀ (from column slices) when M is wider than tall (or `rows=True`), else Mᵀ M (from row
    slices), in float64.

    Each slice's product is added a band of rows at a time into the upper triangle only (half the
    arithmetic, and no second d×d matrix); the lower triangle is mirrored at the end."""
    wide = view.rows < view.cols if rows is None else rows
    side = view.rows if wide else view.cols
    g = np.zeros((side, side))
    for _, part in (view.col_slices() if wide else view.row_slices()):
        factor = part if wide else part.T  # g += factor @ factor.T
        for i in range(0, side, band):
            g[i:i + band, i:] += factor[i:i + band] @ factor[i:].T
    for i in range(0, side, band):
        g[i + band:, i:i + band] = g[i:i + band, i + band:].T
    return g


def lanczos_largest(matvec: Callable[[np.ndarray], np.ndarray], n: int, rtol: float,
                    max_iterations: int = LANCZOS_MAX_ITERATIONS, seed: int = 0
                    ) -> tuple[float, int, float, bool]:
    """The largest eigenvalue θ of a symmetric positive semi-definite operator of size n.

    Lanczos with full reorthogonalisation from a seeded random start (deterministic). Stops when
    the residual bound β_k |s_k| of the largest Ritz value is ≤ 2·rtol·θ, on an invariant
    subspace (β = 0), or after max_iterations (then converged is False).
    Returns (θ, iterations, residual bound / θ, converged)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    limit = min(n, max_iterations)
    basis = np.zeros((min(limit + 1, 64), n))  # grows by doubling: memory follows the iterations used
    basis[0] = q
    alpha: list[float] = []
    beta: list[float] = []
    theta, residual = 0.0, math.inf
    for k in range(limit):
        w = np.asarray(matvec(basis[k]), dtype=np.float64)
        if not np.all(np.isfinite(w)):
            return math.nan, k + 1, math.nan, False
        alpha.append(float(basis[k] @ w))
        q_k = basis[:k + 1]
        for _ in range(2):  # twice is enough (Kahan's "twice is enough")
            w -= q_k.T @ (q_k @ w)
        b = float(np.linalg.norm(w))
        t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        values, vectors = np.linalg.eigh(t)
        theta = float(values[-1])
        residual = b * abs(float(vectors[-1, -1]))
        scale = max(abs(theta), np.finfo(float).tiny)
        if residual <= 2 * rtol * scale or b <= np.finfo(float).eps * scale or k + 1 == n:
            return theta, k + 1, residual / scale, True
        beta.append(b)
        if k + 1 == basis.shape[0]:
            basis = np.vstack([basis, np.zeros((min(basis.shape[0], limit + 1 - basis.shape[0]), n))])
        basis[k + 1] = w / b
    return theta, limit, residual / max(abs(theta), np.finfo(float).tiny), False


# ------------------------------------------------------------------------------------------------
# For pictures: singular-value spectra, block averages, histograms

def singular_values(view: MatrixView, max_side: int = SPECTRUM_MAX_SIDE) -> np.ndarray | None:
    """Every singular value, largest first (None when the smaller side exceeds max_side or the
    matrix holds non-finite values): LAPACK SVD when small, else √ of the Gram matrix's eigenvalues."""
    side = min(view.rows, view.cols)
    if side > max_side:
        return None
    if view.size <= EXACT_MAX_ELEMENTS:
        m = view.whole()
        if not np.all(np.isfinite(m)):
            return None
        return np.linalg.svd(m, compute_uv=False)
    return singular_values_from_gram(gram(view))


def singular_values_from_gram(g: np.ndarray) -> np.ndarray | None:
    """√ of the eigenvalues of a Gram matrix, largest first (None when it is not finite)."""
    if not np.all(np.isfinite(g)):
        return None
    return np.sqrt(np.clip(np.linalg.eigvalsh(g), 0.0, None))[::-1].copy()


def block_average(view: MatrixView, max_side: int) -> tuple[np.ndarray, int]:
    """The matrix shrunk by averaging factor×factor blocks of its finite values (NaN where a block
    holds none), factor = ceil(max(rows, cols) / max_side); returns (image, factor)."""
    factor = max(1, -(-max(view.rows, view.cols) // max_side))
    out_rows, out_cols = -(-view.rows // factor), -(-view.cols // factor)
    sums = np.zeros((out_rows, out_cols))
    counts = np.zeros((out_rows, out_cols))
    edges = np.arange(0, view.cols, factor)
    for start, band in view.row_slices():
        finite = np.isfinite(band)
        values = np.where(finite, band, 0.0)
        row_bins = (start + np.arange(band.shape[0])) // factor
        np.add.at(sums, row_bins, np.add.reduceat(values, edges, axis=1))
        np.add.at(counts, row_bins, np.add.reduceat(finite.astype(np.float64), edges, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return image, factor


def histogram(blocks: Sequence[Block], edges: np.ndarray) -> np.ndarray:
    """Counts of the blocks' finite values in the bins of `edges` (np.histogram's convention)."""
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for block in blocks:
        for chunk in iter_block_rows(block, dequantize=True):
            values = as_float64(chunk, f"block {block.name}").reshape(-1)
            values = values[np.isfinite(values)]
            counts += np.histogram(values, bins=edges)[0]
    return counts

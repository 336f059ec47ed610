"""SpinML's leakage metrics (``seeds.md`` §1.4), batched, plus a per-image near-copy check SpinML lacks.

**Normalised mutual information (MI), pixel level** (SpinML ``src/privacy/sim_mi.py``). Every image is an 8-bit
RGB canvas (the original letterboxes it into a black 512 x 512 square: :func:`spinml_canvas`) flattened to one
vector of H·W·3 values, channels pooled. For a pair (a, b) of such vectors the original takes numpy's
``histogram2d(a, b, bins=256)``: 256 equal-width bins per axis spanning *that vector's own* [min, max] (the max
falls in the last bin; a constant vector gets [v - 0.5, v + 0.5]), and the plug-in estimate

    MI(a, b) = Σ_ij p_ij · ln(p_ij / (p_i · q_j))      nats; p = joint bin counts / number of values

(:func:`mutual_information`). Every score is then divided by MI(raw, raw) = the plug-in entropy H(raw) of the
full real image's binned values (:func:`binned_entropy`). What is compared with what is the original's choice
(:func:`spinml_mi_rows`): the *released guide* of the real foreground (its Canny edge map at L1, the segment
itself at L2) against a real segment, never a synthetic image:

=====================  ==========================================  ==================================
original row           formula                                      name here
=====================  ==========================================  ==================================
L1_L0, foreground      MI(Canny(fg), fg) / H(raw)                   ``L1/guide_vs_foreground``
L2_L0, foreground      MI(fg, fg) / H(raw)  (= H(fg) / H(raw))      ``L2/guide_vs_foreground``
L1_L0, "background"    MI(Canny(fg), bg) / H(raw)                   ``L1/guide_vs_background``
L2_L0, "background"    MI(fg, bg) / H(raw)                          ``L2/guide_vs_background``
=====================  ==========================================  ==================================

The "background" rows measure what the *foreground's* guide says about the real background segment (the
background itself is at L0, so nothing of it is released); fg and bg are complementary masked crops of one
photo, so the L2 row is far from 0 through the shared mask alone. At L0 nothing image-like is released, so the
original reports 0 without computing anything; a constant guide gives exactly 0 here as well (one histogram
row: p_ij = q_j). **Unrelated images do not give 0**: the plug-in estimate is biased upwards by about
(K_a - 1)(K_b - 1) / (2 n) nats for K occupied bins and n values (Miller 1955), i.e. ~0.041 nats, ~0.008 after
normalisation, for two independent full-range 512 x 512 x 3 canvases; far more on small images (n near 256²).

**SIM** (``sim_img2img.py``): the mean cosine similarity over *all* (synthetic i, real j) pairs of image
embeddings (BLIP-2's vision tower in the original; any model of ``privacy.embeddings`` here). The mean of all
M·N cosines equals the dot product of the two sets' mean unit vectors, which is how :func:`sim_score` computes
it (no M x N matrix); its 95 % interval is a two-sample percentile bootstrap.

**Nearest real image** (not in SpinML): for every synthetic embedding, the largest cosine to any real one and
that real image's index (exact search, faiss ``IndexFlatIP`` on unit vectors, cosines recomputed in float64);
the share above a threshold flags near-copies, with a Wilson 95 % interval (:func:`nearest_real`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from privacy.checks import check_shape, finite_floats

BINS = 256  # the original's histogram2d bins
CANVAS = 512  # the original's letterbox side
CANNY_THRESHOLDS = (100, 200)  # the original's cv2.Canny thresholds (L1 guide)
_CHUNK_VALUES = 1 << 23  # pixel values binned at once (bounds each int64 index array at 64 MB)
_CHUNK_CELLS = 1 << 22  # joint-histogram cells counted at once (32 MB of int64 counts)


def pixel_vectors(images: Any, what: str) -> np.ndarray:
    """(N, ...) 8-bit images -> (N, D) uint8 vectors, D = product of the per-image axes (H·W·C).

    Raises:
        ValueError: naming ``what``: not an integer array, fewer than 2 axes, empty, or values outside [0, 255].
    """
    arr = np.asarray(images)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expected 8-bit pixel values (an integer array, e.g. uint8); found dtype {arr.dtype}")
    if arr.ndim < 2 or arr.size == 0:
        raise ValueError(f"{what}: expected a non-empty (N, H, W, C) or (N, D) image array; found shape {arr.shape}")
    if arr.dtype != np.uint8:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise ValueError(f"{what}: expected pixel values in [0, 255]; found [{low}, {high}]")
    return arr.reshape(len(arr), -1).astype(np.uint8, copy=False)


def _bin_tables(vectors: np.ndarray, bins: int) -> np.ndarray:
    """(N, 256) bin of every possible value 0..255 under each row's own histogram2d edges (numpy's rules)."""
    values = np.arange(256, dtype=np.uint8)
    tables = np.empty((len(vectors), 256), dtype=np.int64)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for r, (low, high) in enumerate(zip(vectors.min(axis=1), vectors.max(axis=1))):
        key = (int(low), int(high))
        if key not in cache:
            first, last = (low - 0.5, high + 0.5) if low == high else (low, high)
            edges = np.linspace(first, last, bins + 1)
            # searchsorted(side='right') - 1, with the top edge moved into the last bin, as histogramdd does.
            found = np.searchsorted(edges, values, side="right") - 1 - (values == edges[-1])
            cache[key] = np.clip(found, 0, bins - 1)
        tables[r] = cache[key]
    return tables


def _mi_chunk(a: np.ndarray, b: np.ndarray, bins: int) -> np.ndarray:
    """(n,) plug-in MI in nats of row pairs (a[r], b[r]), each axis binned on its row's own range.

    Σ over cells of p_ij ln(p_ij / (p_i q_j)) is computed as the mean over the row's values of
    ln(n c_ij / (r_i s_j)) for the cell (i, j) each value falls in (c: joint count, r, s: marginal counts, n:
    values): the same sum regrouped, so only the occupied cells are ever touched.
    """
    n, d = a.shape
    rows = np.arange(n)[:, None]
    ia = rows * bins + _bin_tables(a, bins)[rows, a]  # (n, d) row-offset bin of every value
    ib = rows * bins + _bin_tables(b, bins)[rows, b]
    cell = ia * bins + (ib - rows * bins)
    joint = np.bincount(cell.ravel(), minlength=n * bins * bins)[cell]
    marg_a = np.bincount(ia.ravel(), minlength=n * bins)[ia]
    marg_b = np.bincount(ib.ravel(), minlength=n * bins)[ib]
    return np.log(d * joint.astype(np.float64) / (marg_a.astype(np.float64) * marg_b)).mean(axis=1)


def mutual_information(a: Any, b: Any, bins: int = BINS) -> np.ndarray:
    """Plug-in mutual information of paired 8-bit images, SpinML's ``compute_mutual_information``, batched.

    Args:
        a, b: (N, H, W, C) or (N, D) 8-bit images (integer dtype, values 0..255), paired by position; each row
            is flattened (channels pooled) and binned into ``bins`` equal bins over its own [min, max].
        bins: histogram bins per axis (the original: 256).

    Returns:
        (N,) float64 MI in nats, >= 0 (up to rounding); equal to numpy ``histogram2d`` + the original's double
        sum up to float rounding (~1e-13 relative; a constant image gives exactly 0). Unrelated images score
        above 0 (plug-in bias, see the module docstring).

    Raises:
        ValueError: non-integer or out-of-range pixels, an empty or 1-d array, or ``a`` and ``b`` of other shapes.
    """
    check_shape(np.asarray(b), np.shape(a), "mutual_information: b (paired with a by position)")
    a, b = pixel_vectors(a, "mutual_information: a"), pixel_vectors(b, "mutual_information: b")
    if bins < 1:
        raise ValueError(f"mutual_information: bins must be at least 1; got {bins}")
    step = max(1, min(_CHUNK_VALUES // a.shape[1], _CHUNK_CELLS // bins**2))
    return np.concatenate([_mi_chunk(a[s : s + step], b[s : s + step], bins) for s in range(0, len(a), step)])


def binned_entropy(images: Any, bins: int = BINS) -> np.ndarray:
    """(N,) plug-in entropy in nats of each image's values binned as ``mutual_information`` bins them.

    This is MI(x, x), the original's normaliser ("entropy_info"), computed from the 1-d histogram (the joint
    histogram of a vector with itself is diagonal, so both agree up to rounding).
    """
    x = pixel_vectors(images, "binned_entropy: images")
    tables = _bin_tables(x, bins)
    rows = np.arange(len(x))[:, None]
    counts = np.zeros((len(x), bins), dtype=np.float64)
    step = max(1, _CHUNK_VALUES // x.shape[1])
    for s in range(0, len(x), step):
        part = tables[rows[s : s + step], x[s : s + step]] + (rows[s : s + step] - s) * bins
        counts[s : s + step] = np.bincount(part.ravel(), minlength=len(part) * bins).reshape(-1, bins)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.0 - np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)  # 0.0 - : no -0.0 for a constant image


def normalised_mutual_information(guide: Any, target: Any, raw: Any, bins: int = BINS) -> np.ndarray:
    """(N,) MI(guide, target) / H(raw): SpinML's normalised MI (``sim_mi.py``), batched over image triples.

    Args:
        guide: (N, ...) 8-bit released guides (Canny map at L1, the segment at L2).
        target: (N, ...) 8-bit real segments, same shape as ``guide``.
        raw: (N, ...) 8-bit full real images (any per-image size); H(raw) must be > 0 (not a constant image).
    """
    mi = mutual_information(guide, target, bins)
    h = binned_entropy(raw, bins)
    check_shape(h, (len(mi),), "normalised_mutual_information: raw (one per pair)", ("image",))
    if (h <= 0).any():
        raise ValueError(f"normalised_mutual_information: raw image {int(np.argmax(h <= 0))} is constant (entropy 0)")
    return mi / h


def spinml_mi_rows(
    raw: Any, foreground: Any, background: Any, foreground_edges: Any | None = None, bins: int = BINS
) -> dict[str, np.ndarray]:
    """SpinML's four MI rows per image (module docstring table): {'L2/guide_vs_foreground': (N,), ...}.

    Args:
        raw, foreground, background: (N, H, W, 3) 8-bit canvases of the full real image and its two segments,
            paired by position (e.g. :func:`spinml_canvas` of each file).
        foreground_edges: (N, H, W, 3) the L1 guide, :func:`canny_guide` of each foreground canvas; the L1
            rows are left out when None.
    """
    out = {
        "L2/guide_vs_foreground": normalised_mutual_information(foreground, foreground, raw, bins),
        "L2/guide_vs_background": normalised_mutual_information(foreground, background, raw, bins),
    }
    if foreground_edges is not None:
        out["L1/guide_vs_foreground"] = normalised_mutual_information(foreground_edges, foreground, raw, bins)
        out["L1/guide_vs_background"] = normalised_mutual_information(foreground_edges, background, raw, bins)
    return out


def spinml_canvas(image: Any, side: int = CANVAS) -> np.ndarray:
    """(side, side, 3) uint8: a PIL image as RGB, shrunk/enlarged to fit (LANCZOS, aspect kept, sizes truncated to
    int), pasted centred on black, as the original's ``load_and_preprocess_image``."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = min(side / h, side / w)
    new_w, new_h = int(w * scale), int(h * scale)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.LANCZOS), ((side - new_w) // 2, (side - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def canny_guide(canvas: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 L1 guide of an RGB canvas: OpenCV grey, Canny(100, 200), repeated on 3 channels (0/255).

    Needs OpenCV (``pip install opencv-python-headless``): other Canny implementations smooth and threshold
    differently, so their maps (and the L1 rows) would not be the original's.
    """
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "canny_guide needs OpenCV for the original's Canny edges: pip install opencv-python-headless"
        ) from err
    arr = np.asarray(canvas)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"canny_guide: expected an (H, W, 3) uint8 RGB canvas; found {arr.dtype} {arr.shape}")
    edges = cv2.Canny(cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY), *CANNY_THRESHOLDS)
    return np.repeat(edges[:, :, None], 3, axis=2)


def unit_rows(embeddings: Any, what: str) -> np.ndarray:
    """(N, D) finite embeddings -> float64 rows of norm 1; a zero row (no direction) is refused."""
    x = finite_floats(embeddings, what, ("image", "feature"), 2)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{what}: embedding of image {int(np.argmax(norms == 0))} is all zeros (cosine undefined)")
    return x / norms[:, None]


def _pair(synthetic: Any, real: Any) -> tuple[np.ndarray, np.ndarray]:
    s, r = unit_rows(synthetic, "synthetic embeddings"), unit_rows(real, "real embeddings")
    check_shape(r, (None, s.shape[1]), "real embeddings (same width as the synthetic ones)", ("image", "feature"))
    return s, r


def sim_score(synthetic: Any, real: Any, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """SpinML's SIM: mean cosine similarity over all synthetic x real embedding pairs, with a 95 % interval.

    Args:
        synthetic: (M, D) embeddings of the synthetic images; real: (N, D) of the real ones (finite, non-zero).
        resamples: bootstrap draws (>= 100); 0 skips the interval.
        seed: seed of the draws.

    Returns:
        ``sim`` (cosine, in [-1, 1]); ``sim_ci95`` [low, high]: percentile bootstrap resampling the synthetic and
        the real images independently (each with replacement at its own count); ``per_synthetic`` (M,) the
        mean cosine of each synthetic image to all real ones (SIM is their mean); ``method``.
    """
    s, r = _pair(synthetic, real)
    mean_s, mean_r = s.mean(axis=0), r.mean(axis=0)
    out: dict[str, Any] = {"sim": float(mean_s @ mean_r), "per_synthetic": s @ mean_r, "sim_ci95": None}
    out["method"] = "mean of all pairwise cosines; percentile bootstrap over synthetic and real images, 95 %"
    if resamples:
        if resamples < 100:
            raise ValueError(f"sim_score: resamples must be 0 or at least 100; got {resamples}")
        rng = np.random.default_rng(seed)
        draws = []
        for start in range(0, resamples, 100):  # 100 draws at a time: (100, M) + (100, N) counts
            b = min(100, resamples - start)
            ws = rng.multinomial(len(s), np.full(len(s), 1.0 / len(s)), size=b)  # bootstrap counts per image
            wr = rng.multinomial(len(r), np.full(len(r), 1.0 / len(r)), size=b)
            draws.append(np.einsum("bd,bd->b", ws @ s / len(s), wr @ r / len(r)))
        out["sim_ci95"] = [float(v) for v in np.percentile(np.concatenate(draws), [2.5, 97.5])]
    return out


def wilson_interval(successes: int, total: int, z: float = 1.959963984540054) -> list[float]:
    """Wilson score interval (95 % by default) of a binomial share ``successes / total``."""
    if total <= 0:
        raise ValueError(f"wilson_interval: need at least one trial; got {total}")
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # the exact ends at 0 / total (rounding leaves ~1e-17 there otherwise)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return [low, high]


def nearest_real(synthetic: Any, real: Any, threshold: float = 0.95) -> dict[str, Any]:
    """Each synthetic embedding's most similar real embedding (cosine), and the share of near-copies.

    Args:
        synthetic: (M, D), real: (N, D) finite, non-zero embeddings.
        threshold: cosine above which (strictly) a synthetic image counts as a near-copy of a real one. 0.95 is a
            heuristic, not calibrated: set it per embedding model (e.g. from real-vs-real nearest cosines).

    Returns:
        ``cosine`` (M,) float64 largest cosine to any real image; ``index`` (M,) int64 that real image's row;
        ``near_copy`` (M,) bool; ``share`` of near-copies and its Wilson 95 % ``share_ci95``; ``threshold``.
    """
    import faiss

    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"nearest_real: threshold is a cosine, expected in [-1, 1]; got {threshold}")
    s, r = _pair(synthetic, real)
    index = faiss.IndexFlatIP(r.shape[1])
    index.add(np.ascontiguousarray(r, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(s, dtype=np.float32), 1)
    if (found < 0).any():
        raise ValueError(f"nearest_real: faiss found no neighbour for {int((found < 0).sum())} synthetic images")
    nearest = found[:, 0].astype(np.int64)
    cosine = np.einsum("md,md->m", s, r[nearest])  # float64: faiss's float32 products blur near-ties at 1
    near = cosine > threshold
    return {
        "cosine": cosine,
        "index": nearest,
        "near_copy": near,
        "share": float(near.mean()),
        "share_ci95": wilson_interval(int(near.sum()), len(near)),
        "threshold": float(threshold),
    }


def closest_pairs(result: dict[str, Any], k: int = 8) -> list[tuple[int, int, float]]:
    """The ``k`` (synthetic row, nearest real row, cosine) of ``nearest_real`` with the highest cosines."""
    order = np.argsort(-result["cosine"], kind="stable")[:k]
    return [(int(i), int(result["index"][i]), float(result["cosine"][i])) for i in order]

"""The one place where arrays entering an attack, an audit or a data module are checked.

Every check raises ``ValueError`` with a message that names the input (``what``: a file and key, an option),
what was expected and what was found, including the first offending position with its axis names
(e.g. "model 3, example 17"), so a diverged shadow or a corrupt row is found without a debugger.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _position(index: tuple[int, ...], axes: Sequence[str] | None) -> str:
    names = list(axes) if axes is not None and len(axes) == len(index) else [f"axis {i}" for i in range(len(index))]
    return ", ".join(f"{name} {int(i)}" for name, i in zip(names, index))


def check_shape(array: np.ndarray, shape: Sequence[int | None], what: str, axes: Sequence[str] | None = None) -> None:
    """``array.shape`` must match ``shape`` (None: any size on that axis)."""
    found = tuple(np.shape(array))
    want = tuple(shape)
    if len(found) != len(want) or any(w is not None and w != f for w, f in zip(want, found)):
        names = f" ({', '.join(axes)})" if axes else ""
        expected = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise ValueError(f"{what}: expected shape {expected}{names}; found {found}")


def finite_floats(
    array: np.ndarray,
    what: str,
    axes: Sequence[str] | None = None,
    ndim: int | Sequence[int] | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Return ``array`` as ``dtype`` after checking it is numeric (not bool/str/object), of ``ndim`` and finite.

    Raises:
        ValueError: naming ``what``, the number of NaN/inf values and the first one's position (``axes``).
    """
    arr = np.asarray(array)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what}: expected real numbers; found dtype {arr.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim) if ndim is not None else None
    if allowed is not None and arr.ndim not in allowed:
        dims = " or ".join(f"{d}-d" for d in allowed)
        names = f" ({', '.join(axes)})" if axes else ""
        raise ValueError(f"{what}: expected a {dims} array{names}; found shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what}: the array is empty (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        value = arr[first]
        raise ValueError(
            f"{what}: {int(bad.sum())} of {arr.size} values are NaN or infinite; the first is {value} at "
            f"{_position(first, axes)}"
        )
    return arr.astype(dtype, copy=False)


def class_labels(labels: np.ndarray, num_classes: int, what: str, count: int | None = None) -> np.ndarray:
    """1-d integer labels in ``[0, num_classes)`` (``count`` of them when given) as int64.

    Float labels are refused even when they hold whole numbers: a float label column is a sign of a file
    written by another tool (one-hot, probabilities, scaled values), and guessing would hide that.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: class labels must be integers; found dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{what}: class labels must be a 1-d array; found shape {arr.shape}")
    if count is not None and len(arr) != count:
        raise ValueError(f"{what}: expected {count} labels (one per example); found {len(arr)}")
    outside = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if len(outside):
        raise ValueError(
            f"{what}: label {int(arr[outside[0]])} at example {int(outside[0])} lies outside [0, {num_classes - 1}] "
            f"for {num_classes} classes ({len(outside)} labels out of range)"
        )
    return arr.astype(np.int64, copy=False)


def example_ids(ids: np.ndarray | Sequence[str], what: str, count: int | None = None) -> list[str]:
    """1-d, unique example ids (``count`` of them when given) as a list of str."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what}: example ids must be a 1-d array; found shape {arr.shape}")
    if count is not None and len(arr) != count:
        raise ValueError(f"{what}: expected {count} example ids (one per example); found {len(arr)}")
    text = [str(i) for i in arr]
    if len(set(text)) != len(text):
        seen: set[str] = set()
        duplicate = next(i for i in text if i in seen or seen.add(i))
        raise ValueError(f"{what}: example ids must be unique; {duplicate!r} appears more than once")
    return text


def boolean_mask(mask: np.ndarray, shape: Sequence[int], what: str, axes: Sequence[str] | None = None) -> np.ndarray:
    """A bool array of ``shape``; 0/1 integers are accepted, anything else refused."""
    arr = np.asarray(mask)
    check_shape(arr, shape, what, axes)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what}: expected a boolean (or 0/1) mask; found dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr

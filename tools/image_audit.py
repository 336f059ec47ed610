"""`synthpriv image-audit`: does a synthetic image set copy its generator's real training images?

For every synthetic image: its nearest real training image and the distance, the distance to the nearest real
holdout image, and over the set the DCR share (synthetic images nearer a training image than any holdout
image, against the no-copying baseline |train| / (|train| + |holdout|)) and the shares of exact and near
copies (definitions and sources: ``privacy.image_audit``). Always in pixel space (RGB in [0, 1], every image
read by the data modules' ``load_rgb`` rules and resized to ``image_size`` x ``image_size`` with bicubic
interpolation when its size differs); also in embedding space when three npz files of a feature extractor
are given (``embeddings`` (N, D), optional ``ids``; e.g. the ``train.npz`` a ``FeatureWriter`` wrote for
each dataset). Outputs, replaced on every call and written atomically: ``audit.json`` (figures and one row
per synthetic image), ``audit.md`` and ``closest_pairs.png`` (the ``pairs`` synthetic images closest to a
training image in pixel space, each beside that training image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tools.files import atomic_path, write_json_atomic, write_text_atomic

OUTPUTS = ("audit.json", "audit.md", "closest_pairs.png")


def _read_images(root: str, option: str, image_size: int) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(class names, ids 'class/file', class of each image, (N, S, S, 3) uint8) of a class-folder tree."""
    from PIL import Image
    from tqdm import tqdm

    from datamodules.folders import load_rgb, scan_class_folders

    scan = scan_class_folders(root, option)
    ids, classes, pixels = [], [], []
    files = [(name, path) for name, paths in scan.items() for path in paths]
    for name, path in tqdm(files, desc=f"reading {option}", disable=None):
        img = load_rgb(path)
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        ids.append(f"{name}/{path.name}")
        classes.append(name)
        pixels.append(np.asarray(img, dtype=np.uint8))
    return sorted(scan), ids, classes, np.stack(pixels)


def _select_ids(
    ids_file: str, root: str, ids: list[str], classes: list[str], pixels: np.ndarray
) -> tuple[list[str], list[str], np.ndarray]:
    """The images of ``root`` named by ``ids_file`` (ids matched on their last two parts, '<class>/<file>')."""
    from datamodules.captioned_images import read_id_list

    wanted = ["/".join(i.replace("\\", "/").split("/")[-2:]) for i in read_id_list(ids_file, "real_train_ids")]
    position = {name: k for k, name in enumerate(ids)}
    missing = [w for w in wanted if w not in position]
    if missing:
        raise ValueError(
            f"real_train_ids: {len(missing)} of the {len(wanted)} ids in {ids_file} name no image of real_train "
            f"({root}), e.g. {missing[:3]}; give the folder the run trained from"
        )
    keep = sorted({position[w] for w in wanted})
    return [ids[k] for k in keep], [classes[k] for k in keep], pixels[keep]


def _same_classes(expected: list[str], expected_root: str, found: list[str], found_root: str, option: str) -> None:
    if found != expected:
        raise ValueError(
            f"{option} ({found_root}) has class folders {found} but real_train ({expected_root}) has {expected}; "
            "a synthetic dataset must use the real class names"
        )


def _read_embeddings(paths: list[str], option: str) -> tuple[np.ndarray, list[str]]:
    """Rows of ``embeddings`` (and ``ids``, else '<file stem>/<row>') of one or more npz files, checked."""
    from privacy.checks import example_ids, finite_floats

    arrays, ids = [], []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{option}: {path} does not exist; expected an npz file with 'embeddings'")
        try:
            with np.load(path, allow_pickle=False) as data:
                if "embeddings" not in data.files:
                    raise ValueError(f"{option}: {path} holds {sorted(data.files)}; expected 'embeddings' (N, D)")
                emb = data["embeddings"]
                row_ids = data["ids"] if "ids" in data.files else None
        except (OSError, EOFError) as err:
            raise ValueError(f"{option}: cannot read {path} as npz: {err}") from err
        emb = finite_floats(emb, f"{option} {path} 'embeddings'", ("row", "feature"), 2, np.float32)
        if arrays and emb.shape[1] != arrays[0].shape[1]:
            raise ValueError(f"{option}: {path} has {emb.shape[1]}-d embeddings; {paths[0]} has {arrays[0].shape[1]}")
        if row_ids is None:
            row_ids = [f"{path.stem}/{i}" for i in range(len(emb))]
        ids += example_ids(row_ids, f"{option} {path} 'ids'", count=len(emb))
        arrays.append(emb)
    return np.concatenate(arrays), ids


def _space(
    audit: dict[str, Any], syn_ids: list[str], train_ids: list[str], syn_cls: list[str], train_cls: list[str] | None
) -> dict[str, Any]:
    """JSON-ready figures of one space and one row per synthetic image."""
    rows = []
    for i, j in enumerate(audit["nearest_train"]):
        rel = float(audit["relative"][i])
        row = {
            "synthetic": syn_ids[i],
            "nearest_train": train_ids[j],
            "to_train": float(audit["to_train"][i]),
            "to_holdout": float(audit["to_holdout"][i]),
            "relative": rel if np.isfinite(rel) else None,
            "near_copy": bool(audit["to_train"][i] < audit["copy_threshold"] or audit["to_train"][i] == 0),
        }
        if train_cls is not None:
            row["same_class"] = syn_cls[i] == train_cls[j]
        rows.append(row)
    figures = {k: audit[k] for k in ("real_gap_median", "copy_ratio", "copy_threshold")}
    figures.update(exact_copy_share=audit["exact_copy_share"], near_copy_share=audit["near_copy_share"])
    return {**figures, "dcr": audit["dcr"], "images": rows}


def markdown(report: dict[str, Any], pairs: int) -> str:
    """The audit as Markdown: one row per space, then the closest pairs in pixel space."""
    from tools.report_inputs import fmt, md_escape

    lines = [
        "# Memorisation audit",
        "",
        f"synthetic: {md_escape(report['inputs']['synthetic'])}; real training: "
        f"{md_escape(report['inputs']['real_train'])}; real holdout: "
        f"{md_escape(', '.join(report['inputs']['real_holdout']))}",
        "",
        "| space | synthetic | train | holdout | exact copies % | near copies % | near-copy cut-off | "
        "DCR share % | baseline % | excess | median d_train | median d_holdout |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for space in ("pixels", "embeddings"):
        s = report.get(space)
        if s is None:
            continue
        d = s["dcr"]
        lines.append(
            f"| {space} | {len(s['images'])} | {d['train_size']} | {d['holdout_size']} | "
            f"{fmt(100 * s['exact_copy_share'], 1)} | {fmt(100 * s['near_copy_share'], 1)} | "
            f"{fmt(s['copy_threshold'], 3)} | {fmt(100 * d['share'], 1)} | {fmt(100 * d['baseline'], 1)} | "
            f"{fmt(d['excess'], 3)} | {fmt(d['median_to_train'], 3)} | {fmt(d['median_to_holdout'], 3)} |"
        )
    lines += [
        "",
        "d_train / d_holdout: Euclidean distance of a synthetic image to its nearest real training / holdout image "
        f"(pixels: RGB in [0, 1] at {report['image_size']} px; embeddings: z-scored with the real training "
        "statistics). Exact copies: d_train = 0. Near copies: d_train below the cut-off, copy_ratio "
        f"({report['copy_ratio']:g}) x the median distance of a real training image to its nearest other one. "
        "DCR share: synthetic images nearer a training image than any holdout image (ties half); baseline: the "
        "share a generator that does not copy gets, |train| / (|train| + |holdout|); excess: (share - baseline) "
        "/ (1 - baseline), 0 = no sign of copying, 1 = every image nearer the training set.",
        "",
        "## Closest pairs (pixels)",
        "",
        "| synthetic | nearest training image | d_train | d_holdout | d_train / typical real gap |",
        "|---|---|---|---|---|",
    ]
    for row in _closest(report["pixels"]["images"], pairs):
        lines.append(
            f"| {md_escape(row['synthetic'])} | {md_escape(row['nearest_train'])} | {fmt(row['to_train'], 3)} | "
            f"{fmt(row['to_holdout'], 3)} | {fmt(row['relative'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def _closest(rows: list[dict[str, Any]], pairs: int) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["to_train"])[:pairs]


def plot_pairs(
    rows: list[dict[str, Any]], syn: np.ndarray, train: np.ndarray, syn_ids: list[str], train_ids: list[str], path: Path
) -> None:
    """Each of ``rows`` as a synthetic image beside its nearest training image, 4 pairs a row, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn_index = {s: i for i, s in enumerate(syn_ids)}
    train_index = {t: i for i, t in enumerate(train_ids)}
    per_row = min(4, len(rows))
    grid = -(-len(rows) // per_row)
    fig, axes = plt.subplots(grid, 2 * per_row, figsize=(2.2 * per_row * 1.6, 1.9 * grid), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, row in enumerate(rows):
        left, right = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
        left.imshow(syn[syn_index[row["synthetic"]]], interpolation="nearest")
        left.set_title(f"syn {row['synthetic'][-20:]}\nd_train={row['to_train']:.3g}", fontsize=5)
        right.imshow(train[train_index[row["nearest_train"]]], interpolation="nearest")
        right.set_title(f"train {row['nearest_train'][-20:]}\nd_holdout={row['to_holdout']:.3g}", fontsize=5)
    fig.suptitle("synthetic (left) and its nearest real training image (right)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def image_audit(
    synthetic: str,
    real_train: str,
    real_holdout: str | list[str],
    out: str,
    synthetic_embeddings: str | None = None,
    train_embeddings: str | None = None,
    holdout_embeddings: str | list[str] | None = None,
    image_size: int = 32,
    pairs: int = 16,
    copy_ratio: float = 0.1,
    real_train_ids: str | None = None,
) -> Path:
    """Memorisation audit of a synthetic image folder against the real training and holdout folders.

    Args:
        synthetic: class-folder tree of synthetic images (<root>/<class name>/<image>, the real class names).
        real_train: class-folder tree of the real images the generator was trained on.
        real_holdout: class-folder tree(s) of real images the generator never saw (e.g. val and test).
        out: output folder for audit.json, audit.md and closest_pairs.png.
        synthetic_embeddings: npz with 'embeddings' (M, D) (and 'ids') of the synthetic images, e.g. a
            FeatureWriter's train.npz; with the two below, the audit also runs in embedding space.
        train_embeddings: npz with the real training images' embeddings.
        holdout_embeddings: npz file(s) with the real holdout images' embeddings.
        image_size: side in pixels that every image is resized to (bicubic) for the pixel audit.
        pairs: how many closest pairs the PNG and the Markdown list show.
        copy_ratio: near-copy cut-off as a fraction of the median real-to-real nearest distance.
        real_train_ids: the generator's training images when they are part of ``real_train`` only: a file of
            example ids, one per line (e.g. the teacher run's ``trained_ids.txt``, ids ending in
            ``<class>/<file>``); every id must name an image of ``real_train``.
    """
    from privacy.image_audit import memorisation_audit

    holdouts = [real_holdout] if isinstance(real_holdout, str) else list(real_holdout)
    embedding_files = (synthetic_embeddings, train_embeddings, holdout_embeddings)
    if any(f is not None for f in embedding_files) and any(f is None for f in embedding_files):
        raise ValueError(
            "image-audit: give all three of synthetic_embeddings, train_embeddings and holdout_embeddings, or none"
        )
    if image_size < 1 or pairs < 1:
        raise ValueError(f"image-audit: image_size and pairs must be >= 1; got {image_size} and {pairs}")
    if not holdouts:
        raise ValueError("image-audit: real_holdout needs at least one folder")
    # Every input is read and checked before any audit runs or anything is written.
    names, train_ids, train_cls, train_px = _read_images(real_train, "real_train", image_size)
    if real_train_ids is not None:
        train_ids, train_cls, train_px = _select_ids(real_train_ids, real_train, train_ids, train_cls, train_px)
    if len(train_ids) < 2:
        raise ValueError(f"real_train: {real_train} holds {len(train_ids)} image; the audit needs at least 2")
    syn_names, syn_ids, syn_cls, syn_px = _read_images(synthetic, "synthetic", image_size)
    _same_classes(names, real_train, syn_names, synthetic, "synthetic")
    hold_px = []
    for k, root in enumerate(holdouts):
        hold_names, _, _, px = _read_images(root, f"real_holdout[{k}]", image_size)
        _same_classes(names, real_train, hold_names, root, f"real_holdout[{k}]")
        hold_px.append(px)
    embeddings = None
    if synthetic_embeddings is not None:
        hold_files = [holdout_embeddings] if isinstance(holdout_embeddings, str) else list(holdout_embeddings)
        syn_emb, syn_emb_ids = _read_embeddings([synthetic_embeddings], "synthetic_embeddings")
        train_emb, train_emb_ids = _read_embeddings([train_embeddings], "train_embeddings")
        hold_emb, _ = _read_embeddings(hold_files, "holdout_embeddings")
        widths = {"synthetic_embeddings": syn_emb.shape[1], "train_embeddings": train_emb.shape[1]}
        widths["holdout_embeddings"] = hold_emb.shape[1]
        if len(set(widths.values())) != 1:
            raise ValueError(f"image-audit: embedding widths differ: {widths}")
        if len(train_emb) < 2:
            raise ValueError(f"train_embeddings: {train_embeddings} holds {len(train_emb)} row; need at least 2")
        embeddings = (syn_emb, syn_emb_ids, train_emb, train_emb_ids, hold_emb)

    def flat(px: np.ndarray) -> np.ndarray:
        return px.reshape(len(px), -1).astype(np.float32) / 255.0

    pixel = memorisation_audit(flat(syn_px), flat(train_px), flat(np.concatenate(hold_px)), copy_ratio=copy_ratio)
    report: dict[str, Any] = {
        "inputs": {
            "synthetic": str(synthetic),
            "real_train": str(real_train),
            "real_train_ids": real_train_ids,
            "real_holdout": [str(h) for h in holdouts],
            "synthetic_embeddings": synthetic_embeddings,
            "train_embeddings": train_embeddings,
            "holdout_embeddings": holdout_embeddings,
        },
        "image_size": image_size,
        "copy_ratio": copy_ratio,
        "class_names": names,
        "pixels": _space(pixel, syn_ids, train_ids, syn_cls, train_cls),
        "embeddings": None,
    }
    if embeddings is not None:
        syn_emb, syn_emb_ids, train_emb, train_emb_ids, hold_emb = embeddings
        audit = memorisation_audit(syn_emb, train_emb, hold_emb, standardise=True, copy_ratio=copy_ratio)
        report["embeddings"] = _space(audit, syn_emb_ids, train_emb_ids, syn_emb_ids, None)
    out_dir = Path(out)
    write_json_atomic(out_dir / "audit.json", report)
    table = markdown(report, pairs)
    write_text_atomic(out_dir / "audit.md", table)
    closest = _closest(report["pixels"]["images"], pairs)
    plot_pairs(closest, syn_px, train_px, syn_ids, train_ids, out_dir / "closest_pairs.png")
    print(table)
    return out_dir

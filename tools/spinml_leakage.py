"""`synthpriv spinml-leakage`: SpinML's MI and SIM, and a nearest-real check, for every synthetic level of a root.

For a SpinML root (``<root>/real/raw``, ``<root>/real/raw_split/{foreground,background,mask}``,
``<root>/synthetic/L<fg>_L<bg>/``; ``datamodules/spinml_layout.py``) and each level folder:

* **MI** (``privacy.image_leakage.spinml_mi_rows``, reference/seeds.md §1.4): the original compares the *released
  guide* of each real foreground (its Canny map at L1, the segment itself at L2) with the real foreground and with
  the real background segment, normalised by H(raw), on 512 x 512 letterboxed canvases. It never reads a synthetic
  image, so the rows depend on the foreground level only (every ``L1_L*`` folder gets the L1 rows). **L0 is 0 by
  construction**: nothing image-like of the real image is released (text only), the original reports 0 without
  computing anything, and so does this tool. A background level above 0 has no row in the original (null here).
* **SIM** (``sim_score``): mean cosine over all (synthetic, real) embedding pairs with a bootstrap 95 % interval;
  ``image``: synthetic composites (the level's segments composited through its masks, or its ``clean/`` images)
  vs ``real/raw``; ``foreground`` / ``background``: the level's segments vs the real segments (the original's
  per-object SIM; only for levels with segments).
* **Nearest real** (``nearest_real``): each synthetic composite's most similar real image; the share above
  ``threshold`` (near-copies) with a Wilson 95 % interval, and ``closest_<level>.png`` with the closest pairs.

Embeddings come from ``privacy.embeddings.ImageEmbedder`` (default: MobileNetV2 with ImageNet weights, offline;
the original's BLIP-2 works with ``embedder: blip2:<folder>``). Written to ``out``: ``closest_<level>.png``,
``leakage.md`` and ``leakage.json`` last (each atomically). A rerun with the same inputs (every input file's
sha256) and settings does nothing; other inputs or settings into the same ``out`` are refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
PARTS = ("foreground", "background")
METHOD = (
    "MI: SpinML's normalised mutual information (256-bin plug-in estimate, nats, divided by H(raw)) of the real "
    "foreground's released guide (L1: Canny 100/200 of the grey canvas; L2: the segment) with the real foreground and "
    "with the real background segment, on letterboxed canvases; mean over real images with a 95 % percentile "
    "bootstrap interval over images. L0 is 0 by construction (only text is released; nothing is computed). SIM: mean "
    "cosine over all synthetic x real embedding pairs, 95 % two-sample bootstrap. Nearest real: share of synthetic "
    "composites whose largest cosine to a real image exceeds the threshold, Wilson 95 % interval."
)


def _digest(files: list[Path], root: Path) -> str:
    from tools.files import file_sha256

    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{f.relative_to(root)}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _mean_ci(values: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """Mean of per-image values with a 95 % percentile bootstrap interval over images."""
    values = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"mean": float(values.mean()), "ci95": None, "n": len(values)}
    if resamples and len(values) > 1:
        rng = np.random.default_rng(seed)
        means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
        out["ci95"] = [float(v) for v in np.percentile(means, [2.5, 97.5])]
    return out


def _level_images(level_dir: Path) -> tuple[list[str], list[Any], dict[str, list[Any]]]:
    """(names, composited PIL images, {part: segment images}) of one level folder (segments, else clean/)."""
    from datamodules.folders import load_rgb
    from datamodules.spinml_layout import composite_files, find_segments, image_files

    if (level_dir / "foreground").is_dir():
        triples = find_segments(level_dir, None, f"level {level_dir.name}")
        composites = [composite_files(t) for t in triples]
        parts = {p: [load_rgb(getattr(t, p)) for t in triples] for p in PARTS}
        return [t.name for t in triples], composites, parts
    clean = level_dir / "clean"
    if not clean.is_dir() or not image_files(clean):
        raise FileNotFoundError(
            f"level {level_dir.name}: {level_dir} has neither foreground/background/mask segments nor clean/ images"
        )
    files = image_files(clean)
    return [f.name for f in files], [load_rgb(f) for f in files], {}


def _embed(embedder: Any, images: list[Any], side: int) -> np.ndarray:
    import torch
    from PIL import Image

    batch = [
        torch.from_numpy(np.asarray(img.resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255.0)
        for img in images
    ]
    return embedder.embed(torch.stack(batch).permute(0, 3, 1, 2).contiguous())


def real_mi_rows(root: Path, canvas: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per-image MI rows of the real images of ``root`` (``spinml_mi_rows`` on ``spinml_canvas`` canvases)."""
    from datamodules.folders import load_rgb
    from datamodules.spinml_layout import find_segments, image_files
    from privacy.image_leakage import canny_guide, spinml_canvas, spinml_mi_rows

    raw_files = image_files(root / "real" / "raw")
    if not raw_files:
        raise ValueError(f"spinml-leakage: {root / 'real' / 'raw'} holds no images")
    triples = find_segments(root / "real" / "raw_split", [f.name for f in raw_files], "spinml-leakage: real")
    raw = np.stack([spinml_canvas(load_rgb(f), canvas) for f in raw_files])
    fg = np.stack([spinml_canvas(load_rgb(t.foreground), canvas) for t in triples])
    bg = np.stack([spinml_canvas(load_rgb(t.background), canvas) for t in triples])
    edges = np.stack([canny_guide(c) for c in fg])
    return [f.name for f in raw_files], spinml_mi_rows(raw, fg, bg, edges)


def _mi_for(level: int, rows: dict[str, np.ndarray], n: int, resamples: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in PARTS:
        if level == 0:
            out[target] = {"mean": 0.0, "ci95": [0.0, 0.0], "n": n, "note": "0 by construction (text only)"}
        elif f"L{level}/guide_vs_{target}" in rows:
            out[target] = _mean_ci(rows[f"L{level}/guide_vs_{target}"], resamples, seed)
        else:
            out[target] = {"mean": None, "ci95": None, "n": n, "note": f"no MI row for level L{level}"}
    return out


def spinml_leakage(
    root: str,
    out: str,
    levels: list[str] | None = None,
    embedder: str = "mobilenet_v2",
    embedder_weights: str | None = "imagenet",
    embed_resolution: int = 224,
    canvas: int = 512,
    threshold: float = 0.95,
    pairs_shown: int = 8,
    resamples: int = 1000,
    bootstrap_seed: int = 0,
    device: str = "cpu",
) -> Path:
    """MI, SIM and nearest-real leakage of every synthetic level of a SpinML root (module docstring).

    Args:
        root: SpinML root with real/raw, real/raw_split and synthetic/L<fg>_L<bg>/.
        out: output folder (leakage.json, leakage.md, closest_<level>.png).
        levels: level folders to score; default every folder under synthetic/.
        embedder: ImageEmbedder model: a torchvision backbone name, clip:<folder> or blip2:<folder>.
        embedder_weights: torchvision backbones: 'imagenet' (local file), a state-dict path or null (random).
        embed_resolution: side every image is resized to before embedding.
        canvas: side of the MI canvases (the original: 512).
        threshold: cosine above which a synthetic composite counts as a near-copy of a real image.
        pairs_shown: closest pairs drawn per level.
        resamples: bootstrap draws of the MI and SIM intervals (0: none).
        bootstrap_seed: seed of the bootstrap draws.
        device: torch device of the embedder.
    """
    from datamodules.folders import load_rgb
    from datamodules.spinml_layout import image_files, parse_level
    from privacy.embeddings import ImageEmbedder
    from privacy.image_leakage import closest_pairs, nearest_real, sim_score
    from tools.files import finished_record, json_plain, write_json_atomic, write_text_atomic
    from tools.leakage_plots import write_closest_pairs_png

    root_dir = Path(root).expanduser()
    synthetic = root_dir / "synthetic"
    if not (root_dir / "real" / "raw").is_dir() or not synthetic.is_dir():
        raise FileNotFoundError(f"spinml-leakage: {root_dir} needs real/raw/ and synthetic/L<fg>_L<bg>/ folders")
    found = sorted(d.name for d in synthetic.iterdir() if d.is_dir() and not d.name.startswith("."))
    levels = list(levels) if levels else found
    missing = [lv for lv in levels if lv not in found]
    if missing or not levels:
        raise FileNotFoundError(f"spinml-leakage: levels {missing or levels} not in {synthetic} (found {found})")
    parsed = {lv: parse_level(lv, "spinml-leakage --levels") for lv in levels}
    inputs = [f for d in [root_dir / "real", *(synthetic / lv for lv in levels)] for f in d.rglob("*") if f.is_file()]
    settings = {
        "root": str(root_dir),  # as given: the content digest below decides, so a moved clone is not refused
        "inputs_sha256": _digest(inputs, root_dir),
        "levels": levels,
        "embedder": embedder,
        "embedder_weights": embedder_weights,
        "embed_resolution": embed_resolution,
        "canvas": canvas,
        "threshold": threshold,
        "pairs_shown": pairs_shown,
        "resamples": resamples,
        "bootstrap_seed": bootstrap_seed,
    }
    out_dir = Path(out)
    if finished_record(out_dir / "leakage.json", FORMAT, settings, "spinml-leakage results"):
        return out_dir

    real_names, rows = real_mi_rows(root_dir, canvas)
    model = ImageEmbedder(embedder, embedder_weights, embed_resolution, device=device)
    real_images = [load_rgb(root_dir / "real" / "raw" / n) for n in real_names]
    real_emb = _embed(model, real_images, embed_resolution)
    split = root_dir / "real" / "raw_split"
    real_parts = {p: _embed(model, [load_rgb(f) for f in image_files(split / p)], embed_resolution) for p in PARTS}
    results: dict[str, Any] = {}
    for lv in levels:
        names, composites, parts = _level_images(synthetic / lv)
        emb = _embed(model, composites, embed_resolution)
        sims = {"image": sim_score(emb, real_emb, resamples, bootstrap_seed)}
        for p, images in parts.items():
            sims[p] = sim_score(_embed(model, images, embed_resolution), real_parts[p], resamples, bootstrap_seed)
        near = nearest_real(emb, real_emb, threshold)
        png = out_dir / f"closest_{lv}.png"
        write_closest_pairs_png(near, composites, real_images, png, pairs_shown, names, real_names)
        results[lv] = {
            "levels": {"foreground": parsed[lv][0], "background": parsed[lv][1]},
            "images": len(names),
            "mi": _mi_for(parsed[lv][0], rows, len(real_names), resamples, bootstrap_seed),
            "sim": {k: {"sim": v["sim"], "ci95": v["sim_ci95"]} for k, v in sims.items()},
            "nearest_real": {
                "share": near["share"],
                "ci95": near["share_ci95"],
                "threshold": near["threshold"],
                "mean_cosine": float(near["cosine"].mean()),
                "closest": [
                    {"synthetic": names[s], "real": real_names[r], "cosine": c}
                    for s, r, c in closest_pairs(near, pairs_shown)
                ],
                "png": png.name,
            },
        }
        if parsed[lv][1] > 0:
            results[lv]["mi"]["note"] = "the original defines no MI row for a background level above L0"
    record = {
        "format": FORMAT,
        "settings": settings,
        "method": METHOD,
        "real_images": len(real_names),
        "embedder": {"model": embedder, "weights": embedder_weights, "dim": int(real_emb.shape[1])},
        "levels": results,
    }
    write_text_atomic(out_dir / "leakage.md", markdown(record))
    write_json_atomic(out_dir / "leakage.json", json_plain(record))
    print(f"wrote {out_dir / 'leakage.json'} and leakage.md ({len(levels)} levels, {len(real_names)} real images)")
    return out_dir


def markdown(record: dict[str, Any]) -> str:
    """leakage.md: one row per level."""
    from tools.report_inputs import fmt_ci

    lines = [
        f"# SpinML leakage ({record['real_images']} real images; embedder {record['embedder']['model']})",
        "",
        "| level | images | MI fg | MI bg | SIM image | SIM fg | SIM bg | near-real share | mean nearest cosine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv, r in record["levels"].items():
        mi = [fmt_ci(r["mi"][p]["mean"], r["mi"][p]["ci95"], 4) for p in PARTS]
        sim = [fmt_ci(r["sim"][k]["sim"], r["sim"][k]["ci95"], 4) if k in r["sim"] else "–" for k in ("image", *PARTS)]
        near = r["nearest_real"]
        lines.append(
            f"| {lv} | {r['images']} | {' | '.join(mi)} | {' | '.join(sim)} | "
            f"{fmt_ci(near['share'], near['ci95'], 3)} (> {near['threshold']}) | {near['mean_cosine']:.4f} |"
        )
    lines += [
        "",
        record["method"],
        "",
        "Closest pairs per level: " + ", ".join(r["nearest_real"]["png"] for r in record["levels"].values()),
    ]
    return "\n".join(lines) + "\n"

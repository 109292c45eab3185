"""Throughput of the training data pipeline in one worker process (one core).

Fabricates ~50 512x512 JPEG images with 11-class PNG labels in a temporary folder, then measures
``FaceDataset(..., augment="paper", with_edges=True)`` at a 473x473 crop end to end, plus a per-step
breakdown of the same steps done by hand (read/decode, warp, edges, normalise).

    .venv/bin/python benchmarks/bench_data.py [--n 50] [--reps 3] [--crop 473]
"""
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dml_csr.data import FaceDataset, get_schema, write_identity  # noqa: E402
from dml_csr.data.edges import binary_edges, category_edges  # noqa: E402
from dml_csr.data.transforms import (crop_params, normalize_image, sample_augmentation,  # noqa: E402
                                     warp_image, warp_label)
from dml_csr.files import write_text  # noqa: E402


def fabricate(root: str, n: int, size: int = 512, seed: int = 0) -> None:
    """A face-like label (ellipses) and a textured image per sample, in the release layout,
    declared as LaPa (its 11 classes; ``dataset.json``)."""
    rng = np.random.default_rng(seed)
    split = os.path.join(root, "train")
    os.makedirs(os.path.join(split, "images"))
    os.makedirs(os.path.join(split, "labels"))
    write_text(os.path.join(root, "label_names.txt"),
               "\n".join(get_schema("lapa").tokens) + "\n")
    write_identity(root, "lapa", tool="bench_data")       # LaPa's classes, LaPa-sized images
    lines = []
    for k in range(n):
        lab = np.zeros((size, size), np.uint8)
        c = size // 2 + rng.integers(-20, 20, size=2)
        cv2.ellipse(lab, (int(c[0]), int(c[1]) - 40), (200, 230), 0, 0, 360, 10, -1)   # hair
        cv2.ellipse(lab, (int(c[0]), int(c[1])), (150, 200), 0, 0, 360, 1, -1)         # skin
        for cls, dx, dy, ax in ((2, -60, -60, (40, 10)), (3, 60, -60, (40, 10)),
                                (4, -60, -30, (25, 12)), (5, 60, -30, (25, 12)),
                                (6, 0, 30, (20, 40)), (7, 0, 95, (50, 10)),
                                (8, 0, 107, (45, 5)), (9, 0, 118, (50, 10))):
            cv2.ellipse(lab, (int(c[0]) + dx, int(c[1]) + dy), ax, 0, 0, 360, cls, -1)
        colours = rng.integers(0, 256, size=(256, 3)).astype(np.uint8)
        noise = cv2.GaussianBlur(rng.normal(0, 25, (size, size, 3)).astype(np.float32), (0, 0), 2)
        img = np.clip(colours[lab].astype(np.float32) + noise, 0, 255).astype(np.uint8)
        name = f"bench_{k:03d}"
        cv2.imwrite(os.path.join(split, "images", name + ".jpg"), img,
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(split, "labels", name + ".png"), lab)
        lines.append(f"images/{name}.jpg labels/{name}.png")
    write_text(os.path.join(root, "train_list.txt"), "\n".join(lines) + "\n")


def breakdown(ds: FaceDataset, reps: int, crop_size) -> dict:
    """Per-step seconds per sample, the steps of FaceDataset.__getitem__ done one by one."""
    rng = np.random.default_rng(0)
    t = {"read/decode": 0.0, "warp": 0.0, "edges": 0.0, "normalise+tensors": 0.0}
    count = 0
    for _ in range(reps):
        for i in range(len(ds)):
            t0 = time.perf_counter()
            image = ds.read_image(i)
            label = ds.read_label(i, image.shape[:2])
            t1 = time.perf_counter()
            center, scale = crop_params(*image.shape[:2])
            s, r = sample_augmentation(rng, "paper")
            crop = warp_image(image, center, scale * s, r, crop_size)
            lab = warp_label(label, center, scale * s, r, crop_size)
            t2 = time.perf_counter()
            edge = binary_edges(lab)
            cat = category_edges(lab, edge)
            t3 = time.perf_counter()
            x = normalize_image(crop, "bgr")
            y = [torch.from_numpy(a.astype(np.int64)) for a in (lab, edge, cat)]
            t4 = time.perf_counter()
            t["read/decode"] += t1 - t0
            t["warp"] += t2 - t1
            t["edges"] += t3 - t2
            t["normalise+tensors"] += t4 - t3
            count += 1
            del x, y
    return {k: v / count for k, v in t.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--crop", type=int, default=473)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    crop = (args.crop, args.crop)
    with tempfile.TemporaryDirectory() as root:
        fabricate(root, args.n)
        ds = FaceDataset(root, "train", crop_size=crop, augment="paper", with_edges=True, seed=0)
        for i in range(min(5, len(ds))):      # warm-up (page cache, allocator)
            ds[i]
        t0 = time.perf_counter()
        n = 0
        for _ in range(args.reps):
            for i in range(len(ds)):
                ds[i]
                n += 1
        total = (time.perf_counter() - t0) / n
        steps = breakdown(ds, args.reps, crop)

    print(f"FaceDataset train, {args.n} JPEGs 512x512 -> {args.crop}x{args.crop}, augment=paper, "
          f"binary + category edges, 1 thread, {n} samples")
    print(f"{'step':<20}{'ms/sample':>10}{'share':>8}")
    step_sum = sum(steps.values())
    for k, v in steps.items():
        print(f"{k:<20}{1000 * v:>10.2f}{100 * v / step_sum:>7.0f}%")
    print(f"{'sum of steps':<20}{1000 * step_sum:>10.2f}")
    print(f"{'end to end':<20}{1000 * total:>10.2f}   -> {1.0 / total:.1f} samples/s")


if __name__ == "__main__":
    main()

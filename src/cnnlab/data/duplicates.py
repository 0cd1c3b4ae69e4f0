"""Exact and near copies among a data set's images: content hashes (`file_hashes`), all pairs within a pixel
distance (`close_pairs`), and the duplicate groups a split keeps on one side (`duplicate_groups`).

Near copy: the mean absolute difference between the two images' 64x64 gray thumbnails (squashed, the
decode cache's `DecodeSettings(64, "squash", 1)`) is at most `threshold` (default 4/255). On the brain-MRI set the
nearest Training image of each Testing image is either at most 3.3/255 away (259 images: the same slice,
re-encoded or resized) or at least 10/255 away: a wide gap, and 4/255 sits inside it.

Finding every pair within the threshold is exact, not approximate: block sums of the thumbnails at 8x8,
16x16 and 32x32 give lower bounds of the full L1 distance (|sum(a - b)| <= sum|a - b| over each block), so
all pairs are compared cheaply at 8x8 and only the survivors of each level are compared at the next one.
Groups are the connected components of the "exact or near copy" graph. Nothing is written into the dataset.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.cache import load_images
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import Dataset, Sample, report_skipped

THUMB = DecodeSettings(64, "squash", 1)
SIDE = 64
DEFAULT_THRESHOLD = 4 / 255


# ------------------------------------------------------------------------------------------ hashes


def _sha256(path: Path) -> str | OSError:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:  # unreadable since the scan (which skips the files it may not read)
        return e
    return h.hexdigest()


def file_hashes(paths: list[Path]) -> list[str]:
    """SHA-256 of each file's bytes (threads: hashing releases the GIL).

    A file that cannot be read gets a key of its own that equals no other ("unreadable: PATH", never a hex
    digest), so it is nobody's byte-identical copy; the files are named in one warning, as the scan names its
    skipped ones."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_sha256, paths))
    failed = [
        (str(p), f"cannot read: {r.strerror or r}")
        for p, r in zip(paths, results, strict=True)
        if isinstance(r, OSError)
    ]
    if failed:
        report_skipped(failed, strict=False)
    return [f"unreadable: {p}" if isinstance(r, OSError) else r for p, r in zip(paths, results, strict=True)]


# ---------------------------------------------------------------------------------------- distances


def _block_sums(x: torch.Tensor, grid: int) -> torch.Tensor:
    """N x 64 x 64 int32 -> N x grid*grid sums over (64/grid)^2 pixel blocks."""
    n, k = x.shape[0], SIDE // grid
    return x.view(n, grid, k, grid, k).sum((2, 4), dtype=torch.int32).flatten(1)


def _level(x: torch.Tensor, grid: int) -> torch.Tensor:
    return (_block_sums(x, grid) if grid < SIDE else x.flatten(1)).to(torch.int16)  # sums < 2^15 here


def close_pairs(
    thumbs: torch.Tensor, cap: float, chunk: int = 1024, other: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs (i < j) whose mean absolute difference is at most `cap` (0-1 scale), with that distance.

    `thumbs`: N x 1 x 64 x 64 uint8. Exact (integer arithmetic, no candidate is ever missed): an all-pairs
    pass on 8x8 block sums, then the survivors on 16x16, 32x32 and the full 64x64 pixels. Returns
    (pairs: M x 2 long, dist: M float, 0-1 scale). With `other` (K x 1 x 64 x 64), the pairs (i, j) of an
    image i of `thumbs` and an image j of `other` instead: only the cross pairs are compared.
    """
    cross = other is not None
    n, m = thumbs.shape[0], (other.shape[0] if cross else thumbs.shape[0])
    if n < (1 if cross else 2) or m < 1:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
    x = thumbs.reshape(n, SIDE, SIDE).to(torch.int32)
    y = other.reshape(m, SIDE, SIDE).to(torch.int32) if cross else x
    cap_l1 = int(np.floor(cap * 255 * SIDE * SIDE + 1e-6))  # total L1 over 4096 pixels, in gray levels
    coarse = _block_sums(x, 8).to(torch.float32)  # integers below 2^24: float32 sums of them are exact
    coarse_y = _block_sums(y, 8).to(torch.float32) if cross else coarse
    found = []
    for a in range(0, n, chunk):
        start = 0 if cross else a  # within one set, only the pairs i < j
        d = torch.cdist(coarse[a : a + chunk], coarse_y[start:], p=1)
        ii, jj = (d <= cap_l1 + 0.5).nonzero(as_tuple=True)
        keep = torch.ones_like(ii, dtype=torch.bool) if cross else jj > ii
        found.append(torch.stack([ii[keep] + a, jj[keep] + start], 1))
    pairs = torch.cat(found)
    dist = torch.zeros(len(pairs), dtype=torch.int32)
    for grid in (16, 32, SIDE):
        level = _level(x, grid)
        level_y = _level(y, grid) if cross else level
        step = max(1, (1 << 22) // level.shape[1])  # about 8 MB of int16 per gathered block
        dist = torch.cat(
            [
                (level[pairs[c : c + step, 0]] - level_y[pairs[c : c + step, 1]]).abs().sum(1, dtype=torch.int32)
                for c in range(0, len(pairs), step)
            ]
            or [torch.zeros(0, dtype=torch.int32)]
        )
        keep = dist <= cap_l1
        pairs, dist = pairs[keep], dist[keep]
    return pairs, dist.to(torch.float64) / (255 * SIDE * SIDE)


def component_labels(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not edges:
        return np.arange(n)
    e = np.asarray(edges, dtype=np.int64)
    graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def hash_edges(hashes: list[str]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    edges = []
    for i, h in enumerate(hashes):
        if h in first:
            edges.append((first[h], i))
        else:
            first[h] = i
    return edges


def sorted_groups(labels: np.ndarray, keys: list[str]) -> list[list[int]]:
    """Members (indices) of each component of size >= 2, largest first, then by first key: stable ids."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        members.setdefault(int(c), []).append(i)
    groups = [sorted(m, key=lambda i: keys[i]) for m in members.values() if len(m) > 1]
    return sorted(groups, key=lambda m: (-len(m), keys[m[0]]))


def thumbnails(samples: list[Sample], root: Path, cache_dir) -> tuple[torch.Tensor, list[int]]:
    """Gray 64x64 thumbnails (through the shared decode cache) and the indices of the decodable samples."""
    images, _bad, _ = load_images(samples, root, THUMB, cache_dir, mode="memory")
    index = {id(s): i for i, s in enumerate(samples)}
    good = [index[id(s)] for s in images.samples]
    thumbs = images.images if good else torch.zeros(0, 1, SIDE, SIDE, dtype=torch.uint8)
    return thumbs, good


def duplicate_groups(
    ds: Dataset, split: str = "train", cache_dir=None, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, int]:
    """Relative path -> group id for the files of one split that have an exact or near copy in it.

    For `split_train_val(..., groups=...)`: each group goes wholly to train or to validation. Files alone
    are left out. Ids are 0, 1, ... from the largest group down.
    """
    samples = ds.splits.get(split, [])
    if not samples:
        return {}
    rel = [ds.rel(s.path) for s in samples]
    hashes = file_hashes([s.path for s in samples])
    thumbs, good = thumbnails(samples, ds.root, cache_dir)
    pairs, _ = close_pairs(thumbs, threshold)
    edges = hash_edges(hashes) + [(good[i], good[j]) for i, j in pairs.tolist()]
    groups = sorted_groups(component_labels(len(samples), edges), rel)
    return {rel[i]: gid for gid, members in enumerate(groups) for i in members}

"""The decode cache's store (data/store.py, data/cache.py): shards and an index written once and reused, damage
rebuilt, and memory-mapped images that equal the in-memory ones and keep the process small."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_shapes, one_line_error, run_cli
from PIL import Image

from cnnlab.data import store
from cnnlab.data.cache import ImageCache, cache_note, load_images
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import scan
from cnnlab.data.store import INDEX, MappedImages, read_index
from cnnlab.training.run_folder import TIMING_COLUMNS


def samples(root: Path):
    return scan(root).splits["train"]


def test_the_store_is_written_once_and_reused(shapes, tmp_path):
    prep, cache = DecodeSettings(16), tmp_path / "cache"
    first, bad, stats = load_images(samples(shapes), shapes, prep, cache)
    assert stats.decoded == 36 and not bad
    store = ImageCache(shapes, prep, cache).store
    assert (store / INDEX).is_file() and list(store.glob("shard-*.u8"))
    again, _, stats = load_images(samples(shapes), shapes, prep, cache)
    assert stats.decoded == 0 and stats.hits == 36
    assert torch.equal(first.images, again.images) and first.sizes == again.sizes and first.modes == again.modes
    # a changed file is decoded again, alone; the store only grows by a new shard
    target = sorted((shapes / "train" / "circle").iterdir())[0]
    Image.new("RGB", (40, 36), (200, 10, 10)).save(target)
    os.utime(target, ns=(1, 1))
    changed, _, stats = load_images(samples(shapes), shapes, prep, cache)
    assert stats.decoded == 1
    i = [s.path for s in changed.samples].index(target)
    assert not torch.equal(changed.images[i], first.images[i])


def test_a_damaged_index_or_shard_is_rebuilt(shapes, tmp_path):
    prep, cache = DecodeSettings(16), tmp_path / "cache"
    first, _, _ = load_images(samples(shapes), shapes, prep, cache)
    store = ImageCache(shapes, prep, cache).store
    (store / INDEX).write_bytes(b"not a torch file")
    again, _, stats = load_images(samples(shapes), shapes, prep, cache)
    assert stats.decoded == 36 and torch.equal(first.images, again.images)
    assert len(list(store.glob("shard-*.u8"))) == 1  # the shard no index names was removed
    shard = next(store.glob("shard-*.u8"))
    with open(shard, "r+b") as f:  # cut short: the images past the cut are decoded again
        f.truncate(shard.stat().st_size // 2)
    assert len(read_index(store).entries) < 36
    third, _, stats = load_images(samples(shapes), shapes, prep, cache)
    assert 0 < stats.decoded < 36 and torch.equal(first.images, third.images)


def test_a_bad_image_keeps_its_reason(shapes, tmp_path):
    (shapes / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    prep, cache = DecodeSettings(16), tmp_path / "cache"
    _, bad, _ = load_images(samples(shapes), shapes, prep, cache)
    _, again, stats = load_images(samples(shapes), shapes, prep, cache)
    assert stats.decoded == 0 and bad == again and len(bad) == 1 and "broken.png" in bad[0][0]


def test_mapped_images_are_the_in_memory_ones(shapes, tmp_path):
    prep, cache = DecodeSettings(16), tmp_path / "cache"
    memory, _, _ = load_images(samples(shapes), shapes, prep, cache, mode="memory")
    mapped, _, _ = load_images(samples(shapes), shapes, prep, cache, mode="mmap")
    assert isinstance(mapped.images, MappedImages) and mapped.mapped and not memory.mapped
    assert mapped.images.shape == tuple(memory.images.shape) and mapped.nbytes == memory.nbytes
    idx = torch.tensor([5, 0, 35, 5])
    assert torch.equal(mapped.images.gather(idx), memory.images[idx])
    assert torch.equal(mapped.images[3], memory.images[3])
    assert torch.equal(torch.cat(list(mapped.images.split(10))), memory.images)
    mapped.images.channels_last = True
    assert mapped.images.gather(idx).is_contiguous(memory_format=torch.channels_last)
    assert cache_note(mapped).startswith("cache: memory-mapped, ") and cache_note(mapped).endswith(" on disk")
    assert cache_note(memory).startswith("cache: in memory, ")
    keep, _, _ = load_images(samples(shapes), shapes, DecodeSettings(16, resize="keep"), cache, mode="mmap")
    assert isinstance(keep.images, list)  # variable sizes stay in memory


def _mapped_rss() -> int:
    """Resident file-backed pages of this process (RssFile): the mapped store, not malloc's own churn."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


def _read_all(images, passes: int = 3) -> int:
    """Gather every image `passes` times in batches of 16; the growth of the mapped resident pages."""
    before = _mapped_rss()
    for _ in range(passes):
        for chunk in torch.arange(len(images)).split(16):
            images.images.gather(chunk)
    return _mapped_rss() - before


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RssFile from /proc")
def test_reading_a_mapped_set_keeps_the_process_small(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RELEASE_BYTES", 4 << 20)  # hand pages back every 4 MB (64 MB in use)
    root = tmp_path / "noise"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    prep = DecodeSettings(256)  # upscaled: 200 x 196 KB = 39 MB of pixels
    images, _, _ = load_images(samples(root), root, prep, tmp_path / "cache", mode="mmap")
    assert images.nbytes > 35e6
    assert _read_all(images) < images.nbytes / 4  # pages handed back as it reads
    monkeypatch.setattr(store, "RELEASE_BYTES", 1 << 40)  # never handed back: the whole set stays resident
    assert _read_all(images, passes=1) > images.nbytes * 3 / 4  # so the measure above can see a leak


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def test_training_from_the_mapped_store_gives_the_same_history(tmp_path):
    data = make_shapes(tmp_path / "shapes", splits=(("train", 16),), seed=2)
    args = ["--data", data, "--model", "simple-bn", "--image-size", 24, "--epochs", 2, "--batch-size", 8]
    args += ["--set", "threads=1", "--set", "precision=fp32", "--set", "hflip=true", "--set", "rotate=10"]
    memory = run_cli("train", *args, "--set", "cache=memory", "--out", tmp_path / "memory")
    mapped = run_cli("train", *args, "--set", "cache=mmap", "--out", tmp_path / "mapped")
    assert "cache: in memory" in memory.output and "cache: memory-mapped" in mapped.output
    assert _history(tmp_path / "memory") == _history(tmp_path / "mapped")
    assert "unknown cache mode 'bogus'" in one_line_error("train", *args, "--set", "cache=bogus")

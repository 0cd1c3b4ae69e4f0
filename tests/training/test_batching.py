"""Unit tests of cnnlab.training.batching: an epoch's order, its batches, gathering and placing images."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data.cache import ImageSet
from cnnlab.training.batching import batches, epoch_indices, gather, place


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_set(images, labels) -> ImageSet:
    labels = torch.as_tensor(labels, dtype=torch.long)
    return ImageSet(images=images, labels=labels, samples=[None] * len(labels), sizes=[], modes=[])


def fixed_set(labels, size: int = 2) -> ImageSet:
    n = len(labels)
    return image_set(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).clone(), labels)


# 0: 6 images, 1: 3 images, 2: 1 image, 3: none
LABELS = torch.tensor([0, 1, 0, 0, 2, 1, 0, 0, 1, 0])


# ------------------------------------------------------------------------------------- epoch_indices


@pytest.mark.parametrize("mode", ["none", "weights"])
def test_epoch_indices_plain_is_a_permutation(mode):
    order, copies = epoch_indices(LABELS, 4, mode, gen(3))
    assert sorted(order.tolist()) == list(range(10))
    assert copies.dtype == torch.bool and not copies.any()
    assert order.tolist() != list(range(10))  # shuffled (10! orders: identity would be a broken shuffle)


def test_epoch_indices_same_seed_same_order_other_seed_differs():
    a = epoch_indices(LABELS, 4, "oversample", gen(5))
    b = epoch_indices(LABELS, 4, "oversample", gen(5))
    c = epoch_indices(LABELS, 4, "oversample", gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_epoch_indices_oversample_balances_with_marked_copies():
    order, copies = epoch_indices(LABELS, 4, "oversample", gen(1))
    counts = torch.bincount(LABELS[order], minlength=4).tolist()
    assert counts == [6, 6, 6, 0]  # every present class up to the largest; the absent class stays absent
    # the originals appear exactly once, unmarked; the rest are marked copies of the same class
    assert sorted(order[~copies].tolist()) == list(range(10))
    assert torch.bincount(LABELS[order[copies]], minlength=4).tolist() == [0, 3, 5, 0]
    assert len(order) == len(copies) == 18


def test_epoch_indices_undersample_balances_without_repeats():
    for seed in range(5):
        order, copies = epoch_indices(LABELS, 4, "undersample", gen(seed))
        assert torch.bincount(LABELS[order], minlength=4).tolist() == [1, 1, 1, 0]
        assert len(set(order.tolist())) == 3 and not copies.any()
    # with classes of 4 and 2, each class keeps 2 distinct members, drawn at random
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    kept = set()
    for seed in range(20):
        order, _ = epoch_indices(labels, 2, "undersample", gen(seed))
        assert sorted(labels[order].tolist()) == [0, 0, 1, 1]
        assert sorted(order[labels[order] == 1].tolist()) == [4, 5]
        kept.add(tuple(sorted(order[labels[order] == 0].tolist())))
    assert len(kept) > 1  # not always the same two of class 0


# ------------------------------------------------------------------------------------------ batches


def test_batches_cover_every_position_once_and_never_leave_a_batch_of_one():
    images = fixed_set(list(range(9)))
    out = batches(images, torch.randperm(9, generator=gen()), 4)
    assert [len(b) for b in out] == [4, 5]  # 4 + 4 + 1: the single one joins the batch before it
    assert torch.cat(out).tolist() == list(range(9))  # positions into the order, in order
    assert [len(b) for b in batches(fixed_set(list(range(8))), torch.arange(8), 4)] == [4, 4]
    assert [len(b) for b in batches(fixed_set(list(range(10))), torch.arange(10), 4)] == [4, 4, 2]
    assert [b.tolist() for b in batches(fixed_set([0]), torch.arange(1), 4)] == [[0]]


def test_batches_group_variable_sizes_by_shape():
    shapes = [4, 6, 4, 5, 6, 4, 4, 6, 5, 4]
    images = image_set([torch.full((1, s, s), i, dtype=torch.uint8) for i, s in enumerate(shapes)], [0] * 10)
    order = torch.randperm(10, generator=gen(2))
    out = batches(images, order, 2)
    assert sorted(torch.cat(out).tolist()) == list(range(10))
    for b in out:
        assert len({shapes[int(order[p])] for p in b}) == 1, "a batch mixes image sizes"
        assert 2 <= len(b) <= 3
    assert [int(b[0]) for b in out] == sorted(int(b[0]) for b in out)
    # 5 images of size 4 -> 2 + 3, 3 of size 6 -> 3 (2 + 1 merged), 2 of size 5 -> 2
    assert sorted(len(b) for b in out) == [2, 2, 3, 3]


# ---------------------------------------------------------------------------------- batches an epoch


@pytest.mark.parametrize(("mode", "steps"), [("none", 3), ("weights", 3), ("oversample", 5), ("undersample", 2)])
def test_one_size_gives_every_epoch_the_same_number_of_batches(mode, steps):
    labels = [0] * 10 + [1] * 3  # none: 13 -> 4 4 5; oversample: 20 -> 5 x 4; undersample: 6 -> 4 2
    images = fixed_set(labels)
    for seed in range(5):
        order, _ = epoch_indices(images.labels, 2, mode, gen(seed))
        assert len(batches(images, order, 4)) == steps


def test_resampled_sizes_give_each_epoch_its_own_number_of_batches():
    # resize=keep and undersampling: the images drawn set the size buckets, so the count of batches varies
    # (training/trainer.py's epoch_steps counts each epoch's own).
    shapes = [4 if i % 3 else 6 for i in range(30)]
    labels = [0] * 20 + [1] * 10
    images = image_set([torch.zeros(1, s, s, dtype=torch.uint8) for s in shapes], labels)
    counts = {len(batches(images, epoch_indices(images.labels, 2, "undersample", gen(s))[0], 4)) for s in range(20)}
    assert len(counts) > 1


# ------------------------------------------------------------------------------------- gather, place


def test_gather_fixed_and_variable():
    images = fixed_set([0, 1, 0, 1, 0])
    idx = torch.tensor([3, 0, 4])
    assert gather(images, idx)[:, 0, 0, 0].tolist() == [3, 0, 4]
    cl = image_set(
        torch.arange(5 * 3 * 4, dtype=torch.uint8).view(5, 3, 2, 2).contiguous(memory_format=torch.channels_last),
        images.labels,
    )
    got = gather(cl, idx)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, cl.images[[3, 0, 4]])
    var = image_set([torch.full((1, 3, 3), i, dtype=torch.uint8) for i in range(5)], [0] * 5)
    out = gather(var, torch.tensor([2, 4]))
    assert out.shape == (2, 1, 3, 3) and out[:, 0, 0, 0].tolist() == [2, 4]


def test_place_sets_the_layout_of_fixed_sets_only():
    images = image_set(torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).view(2, 3, 2, 2), [0, 1])
    before = images.images.clone()
    placed = place(images, torch.device("cpu"), channels_last=True)
    assert placed.images.is_contiguous(memory_format=torch.channels_last)
    assert not placed.images.is_contiguous()
    assert torch.equal(placed.images, before)
    flat = place(image_set(before.clone(), [0, 1]), torch.device("cpu"), channels_last=False)
    assert flat.images.is_contiguous()
    lst = [torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(3, 4, 4, dtype=torch.uint8)]
    var = place(image_set(list(lst), [0, 1]), torch.device("cpu"), channels_last=True)
    assert isinstance(var.images, list) and all(a is b for a, b in zip(var.images, lst, strict=True))

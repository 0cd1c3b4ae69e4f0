"""Unit tests of cnnlab.training.loops: a training epoch, an evaluation, and logits in input order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import nn

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet
from cnnlab.training.engine import make_engine
from cnnlab.training.loops import predict_logits, train_one_epoch, validate_epoch
from cnnlab.training.optimization import Criterion, Optimization

MEAN, STD = torch.tensor([0.5]), torch.tensor([0.25])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run 10-20x slower on two threads of a busy machine than on one; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
    assert err <= atol, f"max |a - b| = {err} > {atol}"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_set(images, labels) -> ImageSet:
    labels = torch.as_tensor(labels, dtype=torch.long)
    return ImageSet(images=images, labels=labels, samples=[None] * len(labels), sizes=[], modes=[])


def config(**kw) -> Config:
    return Config().update({"device": "cpu", "precision": "fp32", "batch_size": 8, "lr": 0.05, **kw})


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def dark_and_bright(n_per_class: int = 16, size: int = 8, seed: int = 0, bright: int | None = None) -> ImageSet:
    """Class 0: dark noise, class 1: bright noise. Separable by mean brightness."""
    g = gen(seed)
    n_bright = n_per_class if bright is None else bright
    dark = torch.randint(0, 90, (n_per_class, 1, size, size), generator=g)
    light = torch.randint(140, 256, (n_bright, 1, size, size), generator=g)
    x = torch.cat([dark, light]).to(torch.uint8)
    y = torch.tensor([0] * n_per_class + [1] * n_bright)
    perm = torch.randperm(len(y), generator=g)
    return image_set(x[perm].contiguous(), y[perm])


def setup(cfg: Config, images: ImageSet, seed: int = 0):
    eng = make_engine(cfg, tiny_cnn(seed), MEAN, STD)
    opt = Optimization.build(eng.model, cfg, total_steps=4, weight=None, fp16=False)
    return eng, opt


# ------------------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_on_a_separable_problem():
    cfg = config()
    train, val = dark_and_bright(seed=0), dark_and_bright(8, seed=1)
    eng, opt = setup(cfg, train)
    history = [train_one_epoch(eng, train, opt, 2, cfg, epoch) for epoch in range(4)]
    losses = [h["train_loss"] for h in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses
    assert history[-1]["train_acc"] >= 0.9 and history[-1]["train_f1"] >= 0.9
    assert all(h["seen"] == 32 for h in history) and all(h["data_wait_s"] >= 0 for h in history)
    assert eng.model.training  # the loop put the model in training mode
    v = validate_epoch(eng, val, opt.criterion, 2, 5)
    assert not eng.model.training
    assert v["val_acc"] == 1.0 and v["val_f1"] == 1.0 and v["val_recall"] == [1.0, 1.0]


def test_an_epoch_is_reproducible_from_its_seed():
    cfg = config(hflip=True, brightness=0.1, mixup=0.4)
    train = dark_and_bright(seed=2)
    runs = []
    for g_seed in (3, 3, 4):
        eng, opt = setup(cfg, train)
        stats = train_one_epoch(eng, train, opt, 2, cfg, g_seed)
        runs.append((stats["train_loss"], [p.detach().clone() for p in eng.model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert runs[0][0] != runs[2][0]  # another epoch seed: another order, other augmentations, other mixup


@pytest.mark.parametrize(("mode", "seen"), [("none", 20), ("weights", 20), ("oversample", 32), ("undersample", 8)])
def test_training_epoch_sees_the_resampled_set(mode, seen):
    cfg = config(imbalance=mode, batch_size=6)
    train = dark_and_bright(16, seed=3, bright=4)
    eng, opt = setup(cfg, train)
    stats = train_one_epoch(eng, train, opt, 2, cfg, 0)
    assert stats["seen"] == seen
    assert 0.0 <= stats["train_acc"] <= 1.0 and math.isfinite(stats["train_loss"])


def test_training_steps_the_optimizer_once_a_batch():
    cfg = config(batch_size=8, scheduler="onecycle", epochs=1)
    train = dark_and_bright(8, seed=4, bright=9)  # 17 images -> 8 + 9 (a last batch of one joins the one before)
    eng = make_engine(cfg, tiny_cnn(), MEAN, STD)
    opt = Optimization.build(eng.model, cfg, total_steps=2, weight=None, fp16=False)
    train_one_epoch(eng, train, opt, 2, cfg, 0)
    assert opt.optimizer.state_dict()["state"][0]["step"] == 2
    assert opt.scheduler.last_epoch == 2


# --------------------------------------------------------------------------------------- evaluation


class Encoded(nn.Module):
    """Predicts the class written into pixel (0, 0): value 50 * k -> class k; one extra logit from the mean."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.register_buffer("classes", torch.arange(n_classes, dtype=torch.float32))
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        k = x[:, 0, 0, 0] * 255 / 50  # EvalInput with mean 0, std 1 gives x / 255
        return -((k[:, None] - self.classes) ** 2) + 0.01 * x.mean(dim=(1, 2, 3))[:, None] + self.dummy


def encoded_engine(n_classes: int, **overrides):
    cfg = config(channels_last=False, **overrides)
    return make_engine(cfg, Encoded(n_classes), torch.tensor([0.0]), torch.tensor([1.0]))


def encoded_set(true, pred, sizes=None) -> ImageSet:
    sizes = sizes or [4] * len(true)
    imgs = []
    for i, (p, s) in enumerate(zip(pred, sizes, strict=True)):
        im = torch.full((1, s, s), 3 * i, dtype=torch.uint8)
        im[0, 0, 0] = 50 * p
        imgs.append(im)
    return image_set(imgs if len(set(sizes)) > 1 else torch.stack(imgs), true)


TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PRED = [0, 1, 0, 1, 4, 2, 2, 1, 2, 0]  # class 3: in neither; class 4: predicted only


def test_validate_epoch_matches_a_hand_computation_and_scikit_learn():
    eng = encoded_engine(5)
    images = encoded_set(TRUE, PRED)
    out = validate_epoch(eng, images, Criterion(None, 0.0), 5, batch_size=3)
    logits = predict_logits(eng, images, 3)
    assert logits.argmax(1).tolist() == PRED
    # by hand: F1 of class 0 = 2*3/(4+3), 1 = 2*1/(2+3), 2 = 2*3/(4+3), 4 = 0; class 3 is left out
    hand = (6 / 7 + 2 / 5 + 6 / 7 + 0) / 4
    assert out["val_f1"] == pytest.approx(hand, abs=1e-12)
    assert out["val_f1"] == pytest.approx(f1_score(TRUE, PRED, average="macro", zero_division=0), abs=1e-12)
    assert out["val_acc"] == pytest.approx(7 / 10) == accuracy_score(TRUE, PRED)
    assert out["val_recall"] == pytest.approx([3 / 4, 1 / 2, 3 / 4, 0.0, 0.0])
    assert out["val_recall"][:3] == pytest.approx(list(recall_score(TRUE, PRED, labels=[0, 1, 2], average=None)))
    assert out["val_loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor(TRUE))), rel=1e-6)


def test_confusion_matrix_behind_the_scores():
    from cnnlab.training.metrics import confusion, scores

    cm = confusion(torch.tensor(TRUE), torch.tensor(PRED), 5)
    assert cm.tolist() == confusion_matrix(TRUE, PRED, labels=range(5)).tolist()
    assert cm.tolist()[0] == [3, 1, 0, 0, 0] and cm.tolist()[1] == [0, 1, 0, 0, 1]
    assert scores(cm)["f1"] == pytest.approx(f1_score(TRUE, PRED, average="macro", zero_division=0))


def test_validate_epoch_with_tta_scores_the_averaged_prediction():
    images = encoded_set(TRUE, PRED)
    eng, plain = encoded_engine(5, tta=True), encoded_engine(5)
    out = validate_epoch(eng, images, Criterion(None, 0.0), 5, batch_size=4)
    logits = predict_logits(eng, images, 4)
    x = plain.eval_input(images.images)
    with torch.no_grad():
        mean_p = (plain.model(x).softmax(1) + plain.model(x.flip(-1)).softmax(1)) / 2
    close(logits.exp(), mean_p, atol=1e-6)  # log of the mean probability of image and mirror
    # the mirror moves pixel (0, 0) to (0, 3), the background 3 i: class 0 or 1, so TTA changes some guesses
    pred = logits.argmax(1)
    assert pred.tolist() != PRED
    assert out["val_f1"] == pytest.approx(f1_score(TRUE, pred.tolist(), average="macro", zero_division=0))
    assert out["val_loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor(TRUE))), rel=1e-6)


# --------------------------------------------------------------------------------------- predict_logits


def test_predict_logits_keeps_input_order_across_batches():
    eng = encoded_engine(5)
    images = encoded_set(TRUE, PRED)
    whole = predict_logits(eng, images, 64)
    for bs in (2, 3, 7):
        close(predict_logits(eng, images, bs), whole, atol=1e-6)
    for i in range(len(TRUE)):
        single = predict_logits(eng, image_set(images.images[i : i + 1], TRUE[i : i + 1]), 1)
        close(single[0], whole[i], atol=1e-6)
    assert whole.shape == (10, 5)


def test_predict_logits_of_images_of_different_sizes():
    sizes = [4, 6, 4, 5, 6, 6, 4, 5, 4, 4]
    eng = encoded_engine(5)
    images = encoded_set(TRUE, PRED, sizes)
    assert isinstance(images.images, list)
    out = predict_logits(eng, images, 2)
    assert out.shape == (10, 5) and out.argmax(1).tolist() == PRED
    for i, im in enumerate(images.images):
        ref = predict_logits(eng, image_set(im[None], TRUE[i : i + 1]), 1)
        close(out[i], ref[0], atol=1e-6)
    v = validate_epoch(eng, images, Criterion(None, 0.0), 5, 3)
    assert v["val_acc"] == pytest.approx(0.7)


def test_predict_logits_puts_the_model_in_eval_mode():
    cfg = config()
    eng = make_engine(cfg, tiny_cnn(), MEAN, STD)
    eng.model.train()
    images = dark_and_bright(4)
    a = predict_logits(eng, images, 3)
    assert not eng.model.training
    close(a, predict_logits(eng, images, 8), atol=1e-5)  # BatchNorm running stats: batches do not interact
    assert a.shape == (8, 2)


def test_validate_epoch_of_an_empty_set():
    empty = image_set(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), [])
    out = validate_epoch(encoded_engine(3), empty, Criterion(None, 0.0), 3, 4)
    assert math.isnan(out["val_loss"]) and out["val_acc"] == 0.0 and out["val_recall"] == [0.0, 0.0, 0.0]
    assert predict_logits(encoded_engine(3), empty, 4).shape[0] == 0

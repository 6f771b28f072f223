"""Metrics: hand-computed cases and an independent re-derivation (mmseg semantics)."""
import math

import numpy as np
import pytest

from mgca_jax.evaluation.metrics import (ConfusionAccumulator, confusion_matrix, format_table, iou_terms,
                                          paired_bootstrap, scores_from_confusion)


# 2x3 image, 3 classes; pixel (1, 2) is ignored (255).
GT = np.array([[0, 0, 1],
               [1, 2, 255]])
PRED = np.array([[0, 1, 1],
                 [1, 2, 0]])


def test_confusion_hand_case():
    cm = confusion_matrix(PRED, GT, 3)
    # kept (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2)
    expected = np.array([[1, 1, 0],
                         [0, 2, 0],
                         [0, 0, 1]])
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)


def test_iou_hand_case():
    acc = ConfusionAccumulator(3)
    acc.update(PRED, GT)
    r = acc.compute()
    # intersection [1,2,1]; gt areas [2,2,1]; pred areas [1,3,1]; union [2,3,1]
    np.testing.assert_array_equal(r["intersection"], [1, 2, 1])
    np.testing.assert_array_equal(r["union"], [2, 3, 1])
    np.testing.assert_allclose(r["iou"], [0.5, 2 / 3, 1.0])
    assert r["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert r["acc"] == pytest.approx(4 / 5)
    assert r["iou"].dtype == np.float64


def test_ignore_pixels_count_nowhere():
    # the ignored pixel predicted as class 0 must not add to class 0's union
    gt = np.array([[0, 255]])
    pred = np.array([[0, 0]])
    r = _scores(pred, gt, 2)
    np.testing.assert_array_equal(r["union"], [1, 0])
    assert r["iou"][0] == 1.0 and math.isnan(r["iou"][1])
    assert r["acc"] == 1.0


def test_nan_classes_skipped_in_miou():
    # 4 classes: class 3 neither in gt nor predicted -> NaN, not in the mean.
    # class 2 predicted but absent from gt -> IoU 0 (counted).
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    r = _scores(pred, gt, 4)
    assert math.isnan(r["iou"][3])
    np.testing.assert_allclose(r["iou"][:3], [0.5, 1.0, 0.0])
    assert r["miou"] == pytest.approx(0.5)  # (0.5 + 1 + 0) / 3


def test_all_ignored_gives_nan():
    r = _scores(np.zeros((2, 2), int), np.full((2, 2), 255), 3)
    assert np.isnan(r["iou"]).all() and math.isnan(r["miou"]) and math.isnan(r["acc"])


def test_bad_prediction_value_raises_and_names_it():
    with pytest.raises(ValueError, match="7"):
        confusion_matrix(np.array([[0, 7]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="-1"):
        confusion_matrix(np.array([[0, -1]]), np.array([[0, 1]]), 3)
    # a bad prediction at an ignored pixel is dropped with the pixel
    confusion_matrix(np.array([[0, 7]]), np.array([[0, 255]]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="9"):
        confusion_matrix(np.zeros((1, 2), int), np.array([[0, 9]]), 3)


def _scores(pred, gt, c):
    a = ConfusionAccumulator(c)
    a.update(pred, gt)
    return a.compute()


def _reference(preds, gts, c, ignore=255):
    """Independent float64 re-derivation with per-class boolean masks."""
    inter = np.zeros(c)
    union = np.zeros(c)
    correct = 0.0
    total = 0.0
    for p, g in zip(preds, gts):
        valid = g != ignore
        for k in range(c):
            pk = (p == k) & valid
            gk = (g == k) & valid
            inter[k] += float(np.sum(pk & gk))
            union[k] += float(np.sum(pk | gk))
        correct += float(np.sum((p == g) & valid))
        total += float(np.sum(valid))
    iou = np.array([inter[k] / union[k] if union[k] > 0 else np.nan for k in range(c)])
    return iou, np.nanmean(iou), correct / total


def test_random_matches_reference_and_batching():
    rng = np.random.default_rng(0)
    c = 7
    preds, gts = [], []
    for _ in range(5):
        h, w = rng.integers(5, 30, size=2)
        g = rng.integers(0, c - 1, size=(h, w))       # class c-1 never in gt
        g[rng.random((h, w)) < 0.1] = 255
        p = rng.integers(0, c - 2, size=(h, w))       # classes c-2, c-1 never predicted
        preds.append(p)
        gts.append(g)
    iou_ref, miou_ref, acc_ref = _reference(preds, gts, c)

    acc = ConfusionAccumulator(c)
    for p, g in zip(preds, gts):
        acc.update(p, g)
    r = acc.compute()
    np.testing.assert_allclose(r["iou"], iou_ref, equal_nan=True)
    assert math.isnan(r["iou"][c - 1])
    assert r["miou"] == pytest.approx(miou_ref)
    assert r["acc"] == pytest.approx(acc_ref)

    # one-shot on the concatenated pixels == accumulated
    one = ConfusionAccumulator(c)
    one.update(np.concatenate([p.ravel() for p in preds]), np.concatenate([g.ravel() for g in gts]))
    np.testing.assert_array_equal(one.compute()["confusion"], r["confusion"])

    # batched (N, H, W) updates
    bp = rng.integers(0, c, size=(4, 6, 5))
    bg = rng.integers(0, c, size=(4, 6, 5))
    b1 = ConfusionAccumulator(c)
    b1.update(bp, bg)
    b2 = ConfusionAccumulator(c)
    for i in range(4):
        b2.update(bp[i], bg[i])
    np.testing.assert_array_equal(b1.compute()["confusion"], b2.compute()["confusion"])


def test_dataset_level_not_per_image_mean():
    # image A: class 0 IoU 1/1; image B: class 0 IoU 1/3. Dataset level: 2/4, not mean 2/3.
    acc = ConfusionAccumulator(2)
    acc.update(np.array([[0]]), np.array([[0]]))
    acc.update(np.array([[0, 1, 0]]), np.array([[0, 0, 1]]))
    assert acc.compute()["iou"][0] == pytest.approx(2 / 4)


def test_format_table():
    txt = format_table(["cat", "dog", "bird"], np.array([0.5, np.nan, 0.25]), 0.375)
    assert "cat" in txt and "50.00" in txt and "n/a" in txt and "25.00" in txt
    assert "mIoU: 37.50" in txt
    with pytest.raises(ValueError):
        format_table(["a"], np.array([0.1, 0.2]), 0.15)


def test_iou_terms_hand_case():
    # GT/PRED above (ignored pixel dropped): gt areas [2, 2, 1], pred areas [1, 3, 1],
    # intersections [1, 2, 1], so unions [2, 3, 1].
    terms = iou_terms(confusion_matrix(PRED, GT, 3))
    np.testing.assert_array_equal(terms, [[1, 2, 1], [2, 3, 1]])


def _random_images(rng, n, classes=4, size=(6, 7)):
    gt = rng.integers(0, classes, (n,) + size)
    gt[:, 0, 0] = 255
    return gt, [np.where(rng.random(size) < q, gt, rng.integers(0, classes, (n,) + size)) % classes
                for q in (0.7, 0.5)]


def test_paired_bootstrap_matches_a_loop_over_resamples():
    rng = np.random.default_rng(3)
    gt, (pa, pb) = _random_images(rng, 9)
    conf = {k: np.stack([confusion_matrix(p[i], gt[i], 4) for i in range(9)]) for k, p in (("a", pa), ("b", pb))}
    out = paired_bootstrap(np.stack([iou_terms(c) for c in conf["a"]]),
                           np.stack([iou_terms(c) for c in conf["b"]]), samples=200, seed=5)
    # Reference: same draws, each resample's confusion matrices summed, scored by scores_from_confusion.
    draws = np.random.default_rng(5)
    diffs = []
    for _ in range(200):
        idx = draws.integers(0, 9, 9)
        diffs.append(scores_from_confusion(conf["a"][idx].sum(0))["miou"]
                     - scores_from_confusion(conf["b"][idx].sum(0))["miou"])
    full = (scores_from_confusion(conf["a"].sum(0))["miou"] - scores_from_confusion(conf["b"].sum(0))["miou"])
    assert out["diff"] == pytest.approx(full, abs=1e-12) and full > 0
    assert out["low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    assert out["high"] == pytest.approx(np.percentile(diffs, 97.5), abs=1e-12)
    assert out["p_above_zero"] == pytest.approx(np.mean(np.array(diffs) > 0))
    assert out["low"] <= out["diff"] <= out["high"]


def test_paired_bootstrap_of_a_predictor_against_itself_is_zero():
    rng = np.random.default_rng(0)
    gt, (pa, _) = _random_images(rng, 5)
    terms = np.stack([iou_terms(confusion_matrix(pa[i], gt[i], 4)) for i in range(5)])
    out = paired_bootstrap(terms, terms, samples=50)
    assert (out["diff"], out["low"], out["high"], out["p_above_zero"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"\[N, 2, C\]"):
        paired_bootstrap(terms, terms[:, :, :3])

"""evaluation/failure_modes.py: counts on hand-built label maps."""
import numpy as np
import pytest

from mgca_jax.evaluation import failure_modes as F


def _case():
    """10x10 (100 px). gt: class 1 3x3 block (small), class 2 4x5 block (20 px, not small),
    class 1 single pixel (small), one ignored pixel. pred: see the comments."""
    gt = np.zeros((10, 10), np.int32)
    gt[0:3, 0:3] = 1
    gt[5:9, 5:10] = 2
    gt[9, 0] = 1
    gt[0, 9] = 255
    pred = np.zeros((10, 10), np.int32)
    pred[0:3, 0:2] = 1          # 6 of the block's 9 pixels: found
    pred[0:3, 2] = 2            # its other 3: another object's label
    pred[5:9, 5:10] = 2
    pred[5, 5] = 0              # one object pixel labelled background
    pred[4, 4] = 1              # speckle on background
    pred[0, 9] = 3              # speckle where gt is ignored: a fragment, no pixel error
    return pred, gt              # gt[9, 0] (1 px object) is missed


def test_hand_case_counts():
    fm = F.FailureModes(speckle_frac=0.02, small_frac=0.1)     # speckle <= 2 px, small <= 10 px
    pred, gt = _case()
    fm.update(pred, gt)
    s = fm.summary()
    # fragments: class 1 {6 px block, (4,4)}, class 2 {3 px column, 19 px block}, class 3 {(0,9)}
    assert s["fragments_per_image"] == 5 and s["speckle_per_image"] == 2
    assert (s["small_objects"], s["small_found"]) == (2, 1)
    # 99 valid pixels: 30 object, 69 background
    assert s["bg_as_object"] == pytest.approx(1 / 69)
    assert s["object_as_bg"] == pytest.approx(2 / 30)
    assert s["object_as_other"] == pytest.approx(3 / 30)
    fm.update(np.zeros((10, 10), np.int32), np.zeros((10, 10), np.int32))   # a clean image
    s = fm.summary()
    assert s["images"] == 2 and s["fragments_per_image"] == 2.5 and s["speckle_per_image"] == 1.0
    assert s["bg_as_object"] == pytest.approx(1 / 169)
    table = F.format_table({"pixel": s, "group": F.FailureModes().summary()})
    assert "object fragments per image" in table and "2.50" in table and "n/a" in table
    assert "pixel 1/2" in table and "group 0/0" in table


def test_components_are_four_connected():
    mask = np.zeros((3, 3), bool)
    mask[0, 0] = mask[1, 1] = True                # diagonal neighbours: two components
    assert F.components(mask)[1] == 2
    mask[0, 1] = True                             # now joined through an edge
    assert F.components(mask)[1] == 1


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"\(4, 4\) and \(4, 5\)"):
        F.FailureModes().update(np.zeros((4, 4)), np.zeros((4, 5)))

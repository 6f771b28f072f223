"""Visualisation: palette, colourising, grid and overlay/label files."""
import numpy as np
import pytest
from PIL import Image

from mgca_jax.evaluation import visualize as V


def test_palette_deterministic_distinct():
    p = V.palette(171)
    assert p.shape == (171, 3) and p.dtype == np.uint8
    np.testing.assert_array_equal(p, V.palette(171))
    np.testing.assert_array_equal(V.palette(21), p[:21])
    assert p[0].max() < 40                                # background black-ish
    assert len({tuple(c) for c in p}) == 171              # all distinct
    assert not (p == 255).all(axis=1).any()               # white is reserved for ignore


def test_colorize_and_overlay():
    pal = V.palette(3)
    lab = np.array([[0, 1], [2, 255]])
    col = V.colorize(lab, pal)
    assert col.shape == (2, 2, 3) and col.dtype == np.uint8
    np.testing.assert_array_equal(col[0, 1], pal[1])
    np.testing.assert_array_equal(col[1, 1], [255, 255, 255])
    img = np.full((2, 2, 3), 100, np.uint8)
    ov = V.overlay(img, lab, pal, alpha=0.5)
    np.testing.assert_array_equal(ov[1, 1], [100, 100, 100])      # ignore: untinted
    np.testing.assert_allclose(ov[0, 1], np.rint(0.5 * 100 + 0.5 * pal[1].astype(float)), atol=1)
    with pytest.raises(ValueError, match="7"):
        V.colorize(np.array([[7]]), pal)


def _example(rng, h=16, w=20, c=5):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    gt = rng.integers(0, c, size=(h, w))
    gt[0, :3] = 255
    pred = rng.integers(0, c, size=(h, w))
    return img, gt, pred


def test_save_grid(tmp_path):
    rng = np.random.default_rng(0)
    names = ["background", "cat", "dog", "person", "tvmonitor"]
    ex = [_example(rng) for _ in range(2)]
    path = tmp_path / "grid.png"
    size = V.save_grid(path, [e[0] for e in ex], [e[1] for e in ex], [e[2] for e in ex], names, scale=4)
    im = Image.open(path)
    assert im.size == size
    cell_w, cell_h = 20 * 4, 16 * 4
    assert im.width >= 3 * cell_w                      # three columns
    assert im.height > 2 * cell_h + 20                 # two rows + header + legend
    # the upscaled image cell is nearest-neighbour: find the first example's top-left block
    arr = np.asarray(im.convert("RGB"))
    first = ex[0][0]
    found = False
    for y in range(0, 40):
        for x in range(0, 20):
            if np.array_equal(arr[y:y + cell_h:4, x:x + cell_w:4], first):
                found = True
                break
        if found:
            break
    assert found, "upscaled image cell not found in the grid"
    # the legend adds height: compare with the grid drawn without a legend
    size_nolegend = V.save_grid(tmp_path / "g2.png", [e[0] for e in ex], [e[1] for e in ex],
                                [e[2] for e in ex], names, legend="none")
    assert size[1] > size_nolegend[1]
    # every class colour appears in the legend strip (below the rows)
    legend = arr[size_nolegend[1]:]
    for c in V.palette(len(names)):
        assert (legend == c).all(axis=-1).any()


def test_save_grid_without_gt(tmp_path):
    rng = np.random.default_rng(1)
    img, _, pred = _example(rng)
    w3, _ = V.save_grid(tmp_path / "a.png", [img], [pred], [pred], ["a", "b", "c", "d", "e"], legend="none")
    w2, _ = V.save_grid(tmp_path / "b.png", [img], None, [pred], ["a", "b", "c", "d", "e"], legend="none")
    assert w3 - w2 >= 20 * 4                                  # one column fewer


def test_overlay_and_label_png_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(24, 30, 3), dtype=np.uint8)
    pred = rng.integers(0, 150, size=(24, 30))
    names = [f"class{i}" for i in range(150)]
    V.save_overlay_and_labels(img, pred, names, tmp_path / "ov" / "o.png", tmp_path / "lab" / "l.png")
    lab = Image.open(tmp_path / "lab" / "l.png")
    assert lab.mode == "L"
    np.testing.assert_array_equal(np.asarray(lab), pred.astype(np.uint8))
    ov = Image.open(tmp_path / "ov" / "o.png")
    assert ov.width >= 30 and ov.height > 24                  # legend below the overlay

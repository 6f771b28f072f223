"""Captioned scenes: the embedded, procedurally generated default data set.

The world
---------
Each image (64x64 by default) shows 1 to 4 flat-coloured objects on a textured
or cluttered background. There are 8 object classes, with label ids 1..8 in the
order of `CLASS_NAMES` (0 is background):

    circle, square, triangle, star, ring, cross, diamond, crescent

Object colour (one of `COLOURS`, slightly jittered) is a strong but imperfect
cue, as in natural images (grass is usually green): each class has a typical
colour (`TYPICAL_COLOUR`), used with probability `TYPICAL_COLOUR_PROB` when it
contrasts with the background; otherwise any contrasting colour is drawn, so
shape alone must decide about a third of the objects. `ColourPolicy` changes
this per call (`COLOUR_POLICIES`): `no_colour_cue` (typical probability 0:
colour says nothing about the class) and `atypical` (the standard scene's
layout, every object recoloured with a contrasting colour that is not its
class's typical one; the evaluation split that only shape can solve). Sizes range from tiny
(~10 px across at 64x64) to large (~36 px); everything scales with
`image_size`. Objects may overlap (later ones occlude earlier ones) but every
object keeps most of its area visible. Backgrounds are one of: a smooth colour
gradient, a blobby noise texture, low-contrast stripes, a fine low-contrast
checker, or clutter (thin random lines and small dots, which are not objects).

Captions imitate web alt-text: they name SOME of the object classes present
(each class with probability ~0.85, at least one), in many sentence forms with
filler words ("photo of two green squares on a striped background",
"my favourite star!!", "stock image: crescent and cross", ...). Object words are
always exactly a class name or its `PLURALS` form in lower case; no other word
in a caption contains a class name, even as a substring, so a lexicon lookup on
words (or word pieces) is unambiguous. A caption never names a class that is
absent from the image. Relations ("above", "on top of", ...) are truthful.

What is used where
------------------
Training (MGCA, CLIP-style) uses only `image` and `caption`. The per-pixel
`mask` (hard labels of the visible top-most object) and the metadata
(`objects`, `named`, `background`, `template`, `diameters`, `colours`) are for
zero-shot segmentation evaluation and tests only.

Generation is pure numpy and deterministic: `make_example(seed, index, size,
colours)` depends only on its arguments (order-independent).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "crescent")
PLURALS = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
    "ring": "rings", "cross": "crosses", "diamond": "diamonds", "crescent": "crescents",
}
CLASS_IDS = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}
NUM_CLASSES = len(CLASS_NAMES) + 1  # including background (0)

COLOURS = {
    "red": (220, 35, 35),
    "green": (35, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (250, 140, 10),
    "purple": (140, 45, 190),
    "pink": (250, 120, 190),
    "cyan": (20, 205, 220),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
# Each class's typical colour (a shared cue, like "grass is green").
TYPICAL_COLOUR = {
    "circle": "red", "square": "blue", "triangle": "green", "star": "yellow",
    "ring": "purple", "cross": "cyan", "diamond": "pink", "crescent": "white",
}
TYPICAL_COLOUR_PROB = 0.7


@dataclasses.dataclass(frozen=True)
class ColourPolicy:
    """How objects get their colours.

    typical_prob: chance that an object takes its class's typical colour when
      that contrasts with what lies under it (else a random contrasting colour).
    atypical: after drawing the scene with `typical_prob`, recolour every object
      with a contrasting colour that is not its class's typical one (same
      background, layout, sizes and mask; see `generate_scene`).
    """
    typical_prob: float = TYPICAL_COLOUR_PROB
    atypical: bool = False


COLOUR_POLICIES = {
    "standard": ColourPolicy(),
    "no_colour_cue": ColourPolicy(typical_prob=0.0),
    "atypical": ColourPolicy(atypical=True),
}


class NoAtypicalColouring(ValueError):
    """Some object of the scene has no contrasting colour other than its typical one."""


def colour_policy(colours: ColourPolicy | str) -> ColourPolicy:
    if isinstance(colours, ColourPolicy):
        return colours
    if colours not in COLOUR_POLICIES:
        raise ValueError(f"unknown colour policy {colours!r}; choose from {sorted(COLOUR_POLICIES)}")
    return COLOUR_POLICIES[colours]

_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_RGB = np.array([COLOURS[c] for c in _COLOUR_NAMES], np.float32)

BACKGROUNDS = ("gradient", "noise", "stripes", "checker", "clutter")

# Object diameter range (pixels at 64x64; scaled proportionally).
_MIN_DIAM, _MAX_DIAM = 10.0, 36.0
_COUNT_WEIGHTS = np.array([0.35, 0.35, 0.2, 0.1])  # 1, 2, 3, 4 objects
_MIN_VISIBLE = 0.55  # every object keeps at least this fraction of its pixels
_NAME_PROB = 0.85

# Rotation jitter (radians) per class: None = any rotation.
_ROTATION = {
    "circle": 0.0, "square": math.radians(15), "triangle": None, "star": None,
    "ring": 0.0, "cross": math.radians(15), "diamond": math.radians(12), "crescent": None,
}

# ----------------------------------------------------------------------------
# Shapes: membership tests in normalised coordinates (circumradius 1).
# ----------------------------------------------------------------------------

_TRI_NORMALS = np.array([[math.cos(a), math.sin(a)] for a in
                         (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)],
                        np.float32)
_STAR_INNER = 0.45
_STAR_SECTOR = 2 * math.pi / 5
_STAR_T = np.array([1.0, 0.0])
_STAR_I = np.array([_STAR_INNER * math.cos(_STAR_SECTOR / 2), _STAR_INNER * math.sin(_STAR_SECTOR / 2)])


def _inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean membership of points (u, v) in the unit-size shape `name`."""
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "triangle":
        # Equilateral, circumradius 1, inradius 0.5; apex points to -v (up).
        n = _TRI_NORMALS
        return ((u * n[0, 0] + v * n[0, 1] <= 0.5) & (u * n[1, 0] + v * n[1, 1] <= 0.5)
                & (u * n[2, 0] + v * n[2, 1] <= 0.5))
    if name == "star":
        rho = np.sqrt(u * u + v * v)
        phi = np.mod(np.arctan2(v, u), _STAR_SECTOR)
        a = np.minimum(phi, _STAR_SECTOR - phi)  # 0 at a tip, sector/2 at an inner vertex
        qx, qy = rho * np.cos(a), rho * np.sin(a)
        ex, ey = _STAR_I - _STAR_T
        # Same side of the edge (tip -> inner vertex) as the origin (positive cross).
        return ex * (qy - _STAR_T[1]) - ey * (qx - _STAR_T[0]) >= 0.0
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.52 ** 2)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        w, l = 0.3, 0.95
        return ((au <= w) & (av <= l)) | ((av <= w) & (au <= l))
    if name == "diamond":
        return np.abs(u) / 0.62 + np.abs(v) <= 1.0
    if name == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8 ** 2)
    raise ValueError(f"unknown shape {name!r}")


def _rasterise(name, cx, cy, radius, angle, size):
    """2x-supersampled coverage of a shape on its clipped bounding box.

    Returns (y0, x0, coverage float32 [h, w] in [0, 1]) or None if empty.
    """
    x0 = max(int(math.floor(cx - radius)) - 1, 0)
    x1 = min(int(math.ceil(cx + radius)) + 1, size)
    y0 = max(int(math.floor(cy - radius)) - 1, 0)
    y1 = min(int(math.ceil(cy + radius)) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    xs = (x0 + (np.arange(2 * (x1 - x0), dtype=np.float32) + 0.5) * 0.5 - cx) / radius
    ys = (y0 + (np.arange(2 * (y1 - y0), dtype=np.float32) + 0.5) * 0.5 - cy) / radius
    c, s = math.cos(angle), math.sin(angle)
    u = xs[None, :] * c + ys[:, None] * s
    v = -xs[None, :] * s + ys[:, None] * c
    m = _inside(name, u, v).astype(np.float32)
    h, w = y1 - y0, x1 - x0
    cov = m.reshape(h, 2, w, 2).mean(axis=(1, 3))
    return y0, x0, cov


# ----------------------------------------------------------------------------
# Backgrounds (float32 [S, S, 3] in 0..255).
# ----------------------------------------------------------------------------

def _random_colour(rng, lo=20, hi=235):
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an [n, n, C] grid to [size, size, C]."""
    n = grid.shape[0]
    t = np.linspace(0.0, n - 1.0, size, dtype=np.float32)
    i0 = np.minimum(t.astype(np.int32), n - 2)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f)[:, :, None] + grid[i0 + 1] * f[:, :, None]  # [size, n, C]
    cols = rows[:, i0] * (1 - f)[None, :, :] + rows[:, i0 + 1] * f[None, :, :]
    return cols


def _background(rng, kind: str, size: int, yy, xx) -> np.ndarray:
    scale = size / 64.0
    if kind == "gradient":
        c0, c1 = _random_colour(rng), _random_colour(rng)
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) / size
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + t[:, :, None] * (c1 - c0)
        img = img + rng.normal(0, 3.0, size=(size, size, 1)).astype(np.float32)
    elif kind == "noise":
        base = _random_colour(rng, 50, 205)
        n = int(rng.integers(4, 9))
        amp = rng.uniform(15, 35)
        grid = rng.normal(0, 1, size=(n, n, 3)).astype(np.float32)
        img = base + amp * _upsample(grid, size)
        fine = rng.normal(0, rng.uniform(6, 16), size=(size, size, 1)).astype(np.float32)
        img = img + fine
    elif kind == "stripes":
        c0 = _random_colour(rng, 40, 215)
        c1 = c0 + rng.uniform(-1, 1, size=3).astype(np.float32) * rng.uniform(25, 55)
        period = rng.uniform(4, 10) * scale
        a = rng.uniform(0, math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) / period + rng.uniform()
        sel = (np.mod(t, 1.0) < 0.5).astype(np.float32)[:, :, None]
        img = c0 + sel * (c1 - c0)
        img = img + rng.normal(0, 3.0, size=(size, size, 1)).astype(np.float32)
    elif kind == "checker":
        c0 = _random_colour(rng, 40, 215)
        c1 = c0 + rng.uniform(-1, 1, size=3).astype(np.float32) * rng.uniform(20, 45)
        cell = max(rng.uniform(2.5, 5.0) * scale, 1.5)
        ox, oy = rng.uniform(0, cell, size=2)
        sel = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2).astype(np.float32)
        img = c0 + sel[:, :, None] * (c1 - c0)
        img = img + rng.normal(0, 3.0, size=(size, size, 1)).astype(np.float32)
    elif kind == "clutter":
        c0, c1 = _random_colour(rng, 40, 215), _random_colour(rng, 40, 215)
        c1 = c0 + (c1 - c0) * 0.4
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) / size
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + t[:, :, None] * (c1 - c0)
        # Thin lines: anti-aliased segments of width ~1 px (scaled), each
        # evaluated on its own bounding box only.
        n_lines = int(rng.integers(4, 12))
        p = rng.uniform(-0.1 * size, 1.1 * size, size=(n_lines, 4)).astype(np.float32)
        cols = rng.uniform(0, 255, size=(n_lines, 3)).astype(np.float32)
        half_w = 0.55 * scale
        pad = half_w + 1.0
        for (ax, ay, bx, by), col in zip(p, cols):
            x0 = max(int(min(ax, bx) - pad), 0)
            x1 = min(int(max(ax, bx) + pad) + 1, size)
            y0 = max(int(min(ay, by) - pad), 0)
            y1 = min(int(max(ay, by) + pad) + 1, size)
            if x1 <= x0 or y1 <= y0:
                continue
            gx, gy = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
            dx, dy = bx - ax, by - ay
            ll = dx * dx + dy * dy + 1e-6
            tt = np.clip(((gx - ax) * dx + (gy - ay) * dy) / ll, 0.0, 1.0)
            d = np.hypot(gx - (ax + tt * dx), gy - (ay + tt * dy))
            alpha = np.clip(half_w + 0.5 - d, 0.0, 1.0)[:, :, None]
            win = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = win + alpha * (col - win)
        # Small dots (radius <= 1.5 px, far below the smallest object).
        n_dots = int(rng.integers(8, 30))
        centres = rng.uniform(0, size, size=(n_dots, 2)).astype(np.float32)
        radii = rng.uniform(0.6, 1.5, size=n_dots).astype(np.float32) * scale
        cols = rng.uniform(0, 255, size=(n_dots, 3)).astype(np.float32)
        for (cx, cy), r, col in zip(centres, radii, cols):
            x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), size)
            y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), size)
            d = np.hypot(xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy)
            alpha = np.clip(r + 0.5 - d, 0.0, 1.0)[:, :, None]
            win = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = win + alpha * (col - win)
    else:
        raise ValueError(kind)
    return img.astype(np.float32)


# ----------------------------------------------------------------------------
# Captions.
# ----------------------------------------------------------------------------

_NUMBERS = {2: "two", 3: "three", 4: "four"}
_BG_WORDS = {
    "gradient": ("gradient", "smooth", "colourful", "plain"),
    "noise": ("noisy", "grainy", "textured", "blotchy"),
    "stripes": ("striped", "stripy", "lined"),
    "checker": ("checkered", "checked", "tiled"),
    "clutter": ("cluttered", "messy", "busy", "scribbled"),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _size_word(diam: float, size: int, rng) -> str | None:
    d = diam * 64.0 / size
    if d < 14:
        return str(rng.choice(("tiny", "small", "little")))
    if d < 19:
        return "small"
    if d >= 29:
        return str(rng.choice(("large", "big", "huge")))
    if d >= 25:
        return str(rng.choice(("large", "big")))
    return None


def _noun_phrase(rng, cls, insts, size, bare=False):
    """Phrase for all instances of one class, e.g. 'a small red circle', 'two stars'."""
    n = len(insts)
    words = []
    if n == 1:
        inst = insts[0]
        if rng.random() < 0.25:
            sw = _size_word(inst["diameter"], size, rng)
            if sw:
                words.append(sw)
        if rng.random() < 0.4:
            words.append(inst["colour"])
        words.append(cls)
        phrase = " ".join(words)
        return phrase if bare else f"{_article(phrase)} {phrase}"
    colours = {i["colour"] for i in insts}
    r = rng.random()
    if r < 0.6:
        words.append(_NUMBERS[n])
    elif r < 0.75 and not bare:
        words.append("some")
    elif r < 0.85:
        words.append("several" if n > 2 else "a pair of")
    if len(colours) == 1 and rng.random() < 0.4:
        words.append(next(iter(colours)))
    words.append(PLURALS[cls])
    return " ".join(words)


def _join(rng, phrases):
    if len(phrases) == 1:
        return phrases[0]
    r = rng.random()
    if len(phrases) == 2:
        sep = " and " if r < 0.6 else (" with " if r < 0.8 else (" & " if r < 0.9 else ", "))
        return phrases[0] + sep + phrases[1]
    last = ", and " if r < 0.3 else (" and " if r < 0.8 else ", ")
    return ", ".join(phrases[:-1]) + last + phrases[-1]


def _relation(rng, a, b, overlap):
    """Truthful spatial relation of single instance a w.r.t. b."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    opts = ["next to", "near", "beside"]
    if overlap and a["order"] > b["order"]:
        opts += ["on top of", "in front of", "partly hiding"]
    if overlap and a["order"] < b["order"]:
        opts += ["behind", "partly hidden by"]
    if abs(dy) > 1.5 * abs(dx) and abs(dy) > 4:
        opts += ["above" if dy < 0 else "below"] * 2
    if abs(dx) > 1.5 * abs(dy) and abs(dx) > 4:
        opts += ["to the left of" if dx < 0 else "to the right of"] * 2
    return str(rng.choice(opts))


def _caption(rng, instances, background, size, overlaps):
    present = []
    for inst in instances:
        if inst["name"] not in present:
            present.append(inst["name"])
    named = [c for c in present if rng.random() < _NAME_PROB]
    if not named:
        named = [present[int(rng.integers(len(present)))]]
    named = [named[i] for i in rng.permutation(len(named))]
    groups = {c: [i for i in instances if i["name"] == c] for c in named}

    def nps(bare=False):
        return [_noun_phrase(rng, c, groups[c], size, bare=bare) for c in named]

    first_plural = len(groups[named[0]]) > 1
    bg = str(rng.choice(_BG_WORDS[background]))
    forms = ["bare", "photo", "background", "there_is", "favourite", "quality", "stock",
             "drawing", "casual", "question", "wordy"]
    weights = [1.2, 1.5, 1.0, 1.0, 0.6, 1.0, 0.8, 0.8, 0.6, 0.5, 0.8]
    single_pair = len(named) == 2 and all(len(groups[c]) == 1 for c in named)
    if single_pair:
        forms.append("relation")
        weights.append(2.5)
    w = np.array(weights)
    form = forms[int(rng.choice(len(forms), p=w / w.sum()))]

    if form == "bare":
        text = _join(rng, nps())
    elif form == "photo":
        lead = str(rng.choice(("a photo of", "photo of", "picture of", "an image of", "image of",
                               "a snapshot of")))
        text = f"{lead} {_join(rng, nps())}"
    elif form == "background":
        text = f"{_join(rng, nps())} on a {bg} background"
        if rng.random() < 0.4:
            text = f"photo of {text}"
    elif form == "there_is":
        text = f"there {'are' if first_plural else 'is'} {_join(rng, nps())}"
        if rng.random() < 0.3:
            text += " in this picture"
    elif form == "favourite":
        leads = (("my favourite", "i love these", "look at these") if first_plural
                 else ("my favourite", "i love this", "what a nice", "look at this"))
        lead = str(rng.choice(leads))
        text = f"{lead} {_join(rng, nps(bare=True))}"
        text += str(rng.choice(("!!", "!", " :)", "")))
    elif form == "quality":
        lead = str(rng.choice(("close-up of ", "", "")))
        tail = str(rng.choice((", high quality", ", 4k wallpaper", " - free download", ", hd",
                               " | vector art")))
        text = f"{lead}{_join(rng, nps())}{tail}"
    elif form == "stock":
        lead = str(rng.choice(("stock image:", "stock photo:", "clipart:", "icon set:")))
        text = f"{lead} {_join(rng, nps(bare=True))}"
    elif form == "drawing":
        lead = str(rng.choice(("drawing of", "a cartoon of", "illustration with", "simple art:",
                               "abstract painting with")))
        text = f"{lead} {_join(rng, nps())}"
        if rng.random() < 0.3:
            text += f", {bg} background"
    elif form == "casual":
        text = f"{str(rng.choice(('just', 'lol', 'ok so', 'found')))} {_join(rng, nps())}"
        text += str(rng.choice((" lol", " haha", "", " :)")))
    elif form == "question":
        text = f"can you see {_join(rng, nps())}?"
    elif form == "wordy":
        lead = str(rng.choice(("this image contains", "in this picture we have",
                               "the picture shows", "here we see")))
        text = f"{lead} {_join(rng, nps())}"
        if rng.random() < 0.5:
            text += f" on a {bg} background"
    elif form == "relation":
        a, b = groups[named[0]][0], groups[named[1]][0]
        ov = overlaps.get((min(a["order"], b["order"]), max(a["order"], b["order"])), False)
        rel = _relation(rng, a, b, ov)
        p = nps()
        text = f"{p[0]} {rel} {p[1]}"
        if rng.random() < 0.4:
            text = f"there is {text}"
    else:  # pragma: no cover
        raise AssertionError(form)
    if rng.random() < 0.15 and not text.endswith(("!", "?", ")")):
        text += "."
    return text, named, form


# ----------------------------------------------------------------------------
# Scenes.
# ----------------------------------------------------------------------------

_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size):
    g = _GRID_CACHE.get(size)
    if g is None:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        g = _GRID_CACHE[size] = (yy, xx)
    return g


def _contrast(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per palette colour: whether it contrasts with the pixels of `region`
    ([h, w, 3]; every other pixel is sampled): at most 8 % of them within 80 of
    it in RGB and 110 away on average. Also a badness score (lower contrasts more)."""
    px = region[::2, ::2].reshape(-1, 3)
    d = np.sqrt(((px[:, None, :] - _COLOUR_RGB[None, :, :]) ** 2).sum(-1))  # [N, C]
    close = (d < 80.0).mean(axis=0)
    return (close <= 0.08) & (d.mean(axis=0) >= 110.0), close - 1e-3 * d.mean(axis=0)


def _pick_colour(rng, region: np.ndarray, typical: int, typical_prob: float) -> int:
    """Index of a colour that contrasts with `region`: the class's `typical` one
    with probability `typical_prob` if it contrasts, else a random contrasting one
    (the least bad colour when none contrasts)."""
    ok_mask, badness = _contrast(region)
    ok = np.flatnonzero(ok_mask)
    use_typical = rng.random() < typical_prob
    if use_typical and typical in ok:
        return typical
    if ok.size:
        return int(rng.choice(ok))
    return int(np.argmin(badness))


def _pick_atypical(rng, regions, typical: int) -> int:
    """A random colour other than `typical` that contrasts with every region."""
    ok = np.logical_and.reduce([_contrast(r)[0] for r in regions])
    ok[typical] = False
    if not ok.any():
        raise NoAtypicalColouring("no contrasting colour other than "
                                  f"{_COLOUR_NAMES[typical]} for an object")
    return int(rng.choice(np.flatnonzero(ok)))


def _paint(rng, canvas, y0, x0, cov, ci):
    """Blends palette colour `ci` (jittered, with fine noise) into `canvas` by coverage `cov`."""
    h, w = cov.shape
    region = canvas[y0:y0 + h, x0:x0 + w]
    colour = _COLOUR_RGB[ci] + rng.uniform(-12, 12, size=3).astype(np.float32)
    fill = colour + rng.normal(0, 3.0, size=(h, w, 1)).astype(np.float32)
    alpha = cov[:, :, None]
    canvas[y0:y0 + h, x0:x0 + w] = region * (1 - alpha) + fill * alpha


def generate_scene(rng: np.random.Generator, image_size: int = 64,
                   colours: ColourPolicy | str = "standard") -> dict:
    """Draws one captioned scene with the `colours` policy (`COLOUR_POLICIES`).

    Returns a dict with `image` (uint8 [S, S, 3]), `mask` (uint8 [S, S], 0 =
    background, 1..8 = class of the visible top-most object), `caption` (str),
    `objects` (class names in draw order) and metadata: `named` (classes named
    in the caption), `background` (one of BACKGROUNDS), `template` (caption
    form), `diameters` (px), `centres` ((x, y) px), `colours` (colour names),
    all in draw order.

    An atypical policy first draws the whole scene with its `typical_prob` (so
    the rng stream, layout, sizes, mask and background are exactly those of the
    non-atypical scene), then continues the same stream: it repaints the objects
    in draw order onto the bare background, each with a random palette colour
    other than its class's typical one that contrasts both with the bare
    background and with the canvas under its bounding box, then draws a new
    caption. Raises NoAtypicalColouring when an object has no such colour.
    """
    policy = colour_policy(colours)
    size = int(image_size)
    scale = size / 64.0
    yy, xx = _grid(size)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = _background(rng, background, size, yy, xx)
    bare = canvas.copy() if policy.atypical else None
    boxes = []  # (y0, x0, coverage) per instance
    inst_map = np.full((size, size), -1, np.int16)
    mask = np.zeros((size, size), np.uint8)

    n_target = int(rng.choice(4, p=_COUNT_WEIGHTS)) + 1
    instances = []
    areas, visible = [], []
    overlaps = {}
    attempts = 0
    while len(instances) < n_target and attempts < 12 * n_target:
        attempts += 1
        if instances and rng.random() < 0.2:
            name = instances[int(rng.integers(len(instances)))]["name"]
        else:
            name = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        u = rng.random()
        hi = _MAX_DIAM if n_target <= 2 else 30.0
        diam = (_MIN_DIAM + (hi - _MIN_DIAM) * u ** 1.2) * scale
        radius = diam / 2
        margin = radius + 0.5 * scale
        cx = rng.uniform(margin, size - margin)
        cy = rng.uniform(margin, size - margin)
        jitter = _ROTATION[name]
        angle = rng.uniform(0, 2 * math.pi) if jitter is None else rng.uniform(-jitter, jitter)
        r = _rasterise(name, cx, cy, radius, angle, size)
        if r is None:
            continue
        y0, x0, cov = r
        h, w = cov.shape
        hard = cov >= 0.5
        area = int(hard.sum())
        if area < 6:
            continue
        under = inst_map[y0:y0 + h, x0:x0 + w]
        lost = np.bincount(under[hard & (under >= 0)], minlength=len(instances)) if instances else []
        if any(visible[k] - lost[k] < _MIN_VISIBLE * areas[k] for k in range(len(instances))):
            continue
        for k in range(len(instances)):
            if lost[k] > 0:
                overlaps[(k, len(instances))] = True
        # Colour contrasting with what is currently there (background + objects).
        region = canvas[y0:y0 + h, x0:x0 + w]
        ci = _pick_colour(rng, region, _COLOUR_NAMES.index(TYPICAL_COLOUR[name]),
                          policy.typical_prob)
        _paint(rng, canvas, y0, x0, cov, ci)
        boxes.append((y0, x0, cov))
        k = len(instances)
        for j in range(k):
            visible[j] -= int(lost[j])
        under[hard] = k
        mask[y0:y0 + h, x0:x0 + w][hard] = CLASS_IDS[name]
        areas.append(area)
        visible.append(area)
        instances.append(dict(name=name, colour=_COLOUR_NAMES[ci], diameter=float(diam),
                              cx=float(cx), cy=float(cy), order=k))

    caption, named, form = _caption(rng, instances, background, size, overlaps)
    if policy.atypical:
        canvas = bare.copy()
        for inst, (y0, x0, cov) in zip(instances, boxes):
            h, w = cov.shape
            ci = _pick_atypical(rng, (bare[y0:y0 + h, x0:x0 + w], canvas[y0:y0 + h, x0:x0 + w]),
                                _COLOUR_NAMES.index(TYPICAL_COLOUR[inst["name"]]))
            _paint(rng, canvas, y0, x0, cov, ci)
            inst["colour"] = _COLOUR_NAMES[ci]
        caption, named, form = _caption(rng, instances, background, size, overlaps)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return dict(
        image=image,
        mask=mask,
        caption=caption,
        objects=[i["name"] for i in instances],
        named=named,
        background=background,
        template=form,
        diameters=[i["diameter"] for i in instances],
        centres=[(i["cx"], i["cy"]) for i in instances],
        colours=[i["colour"] for i in instances],
    )


def make_example(seed: int, index: int, image_size: int = 64,
                 colours: ColourPolicy | str = "standard") -> dict:
    """Deterministic scene number `index` of the stream with `seed`, coloured by `colours`."""
    return generate_scene(np.random.default_rng([int(seed), int(index)]), image_size, colours)


def caption_class_words(caption: str) -> set:
    """Class names mentioned in a caption (singular or plural word forms)."""
    lookup = {n: n for n in CLASS_NAMES}
    lookup.update({p: n for n, p in PLURALS.items()})
    words = "".join(ch if ch.isalpha() else " " for ch in caption.lower()).split()
    return {lookup[w] for w in words if w in lookup}

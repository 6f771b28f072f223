"""Vision Transformer image tower, with variants by name ("mu/8", "S/16", "B/16").

A variant string is "<size>/<patch>". The tower returns the dense patch features
(the grid MGCA aligns with pixels and objects) and a pooled feature (mean of the
patches, so the pooled embedding is the average of the dense ones; see
docs/method.md, "Image tower").
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# width, depth, mlp_dim, heads. "mu" is a micro size for CPU demos and tests.
SIZES = {
    "mu": dict(width=128, depth=4, mlp_dim=384, num_heads=4),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}


STEMS = ("patch", "conv", "hmlp", "contrast", "patch+contrast")


class UnknownVariantError(ValueError):
    pass


def parse_variant(variant: str) -> dict:
    """"S/16" -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch=16)."""
    size, _, patch = str(variant).partition("/")
    if size not in SIZES or not patch.isdigit() or int(patch) <= 0:
        raise UnknownVariantError(
            f"unknown ViT variant {variant!r}; expected '<size>/<patch>' with size in "
            f"{sorted(SIZES)}, e.g. 'S/16'")
    return dict(SIZES[size], patch=int(patch))


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x)
        return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block; `mask` is [B, 1, L, L] or None."""
    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        y = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, name="attn")(y, y, mask=mask)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        return x + MlpBlock(self.mlp_dim, self.dtype, name="mlp")(y)


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        """mask: None, one mask for every block, or a list with one per block."""
        masks = mask if isinstance(mask, list) else [mask] * self.depth
        for i in range(self.depth):
            x = EncoderBlock(self.mlp_dim, self.num_heads, self.dtype, name=f"block{i:02d}")(x, masks[i])
        return nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)


def halvings(patch: int, stem: str) -> int:
    """Number of stride-2 stages from pixels to a `patch` grid (patch must be a power of two)."""
    n = patch.bit_length() - 1
    if 2 ** n != patch:
        raise UnknownVariantError(f"{stem} stem needs a power-of-two patch, got {patch}")
    return n


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions down to the patch grid, then a 1x1 projection
    (the "early convolutions" stem of Xiao et al. 2021; easier to optimise from scratch)."""
    width: int
    patch: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n = halvings(self.patch, "conv")
        for i in range(n):
            ch = max(self.width // 2 ** (n - i), 16)
            x = nn.Conv(ch, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                        dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(nn.LayerNorm(dtype=self.dtype, name=f"norm{i}")(x))
        return nn.Conv(self.width, (1, 1), dtype=self.dtype, name="proj")(x)


def space_to_depth(x, f):
    """[B, H, W, C] -> [B, H/f, W/f, f*f*C]: each f x f block of pixels becomes one vector."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // f, w // f, f * f * c)


class HMLPStem(nn.Module):
    """Hierarchical MLP stem (Touvron et al. 2022, "Three things everyone should know
    about ViTs"): non-overlapping 2x2 merges, each a Dense + LayerNorm + GELU, down to the
    patch grid. A token still sees only its own patch (as the patch stem), but the weights
    of the first merges are shared over every 2x2 sub-block of the patch, so a part of a
    shape is detected the same way at every offset inside it. Reshapes and matmuls only."""
    width: int
    patch: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n = halvings(self.patch, "hmlp")
        h, w = x.shape[1] // self.patch * self.patch, x.shape[2] // self.patch * self.patch
        x = x[:, :h, :w]   # as the patch stem: pixels past the last whole patch are dropped
        for i in range(n):
            ch = self.width if i == n - 1 else max(self.width // 4, 16)
            x = nn.Dense(ch, dtype=self.dtype, name=f"merge{i}")(space_to_depth(x, 2))
            if i < n - 1:
                x = nn.gelu(nn.LayerNorm(dtype=self.dtype, name=f"norm{i}")(x))
        return x


class ContrastStem(nn.Module):
    """Patch embedding of contrast-normalised pixels: each channel of each p x p patch is
    standardised over the patch's pixels, (x - mean) / sqrt(var + eps^2), before the linear
    projection (local contrast normalisation, as in early convnets; per patch, as MAE's
    normalised-pixel targets). A patch holding two flat colours becomes its own
    foreground/background pattern up to a sign per channel, whatever the two colours, so the
    tokens carry a part's shape and not its colour. keep_rgb also projects the raw patch, so
    colour is still there. eps (in input units) keeps flat patches near zero, not noise."""
    width: int
    patch: int
    keep_rgb: bool = False
    eps: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch
        h, w = x.shape[1] // p * p, x.shape[2] // p * p
        blocks = space_to_depth(x[:, :h, :w], p)                 # [B, h/p, w/p, p*p*C]
        pix = blocks.reshape(blocks.shape[:3] + (p * p, x.shape[-1])).astype(jnp.float32)
        mean, var = pix.mean(axis=3, keepdims=True), pix.var(axis=3, keepdims=True)
        norm = ((pix - mean) * jax.lax.rsqrt(var + self.eps ** 2)).reshape(blocks.shape)
        feats = jnp.concatenate([norm, blocks], -1) if self.keep_rgb else norm
        return nn.Dense(self.width, dtype=self.dtype, name="embedding")(feats.astype(self.dtype))


def parse_radii(spec: str, depth: int) -> list[int]:
    """"1,1,0,0" -> [1, 1, 0, 0]; a single value applies to every block."""
    try:
        radii = [int(v) for v in str(spec).split(",")]
    except ValueError:
        radii = []
    if len(radii) == 1:
        radii = radii * depth
    if len(radii) != depth:
        raise UnknownVariantError(
            f"attention radius {spec!r}: expected one integer or {depth} comma-separated integers")
    return radii


def local_attention_mask(h: int, w: int, radius: int) -> jnp.ndarray:
    """[1, 1, h*w, h*w] bool: True where two grid cells are within `radius` steps."""
    yy, xx = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    near = (jnp.abs(yy[:, None] - yy[None, :]) <= radius) & (jnp.abs(xx[:, None] - xx[None, :]) <= radius)
    return near[None, None]


class ViT(nn.Module):
    """images [B, H, W, 3] -> {"patches": [B, h*w, width], "pooled": [B, width], "grid": (h, w)}.

    stem: "patch" (one strided convolution, the standard ViT), "conv", "hmlp", "contrast"
      (contrast-normalised patches) or "patch+contrast" (both, one projection).
    attention_radius: "" = global attention in every block; otherwise one radius
      per block, comma-separated ("1,1,0,0"): a patch attends only to patches
      within r grid steps (Chebyshev; 0 = itself), a locality prior that keeps
      dense features about their neighbourhood. -1 = global for that block.
    """
    variant: str = "mu/8"
    dtype: Any = jnp.float32
    stem: str = "patch"
    attention_radius: str = ""

    @nn.compact
    def __call__(self, images):
        cfg = parse_variant(self.variant)
        p = cfg["patch"]
        images = images.astype(self.dtype)
        if self.stem == "conv":
            x = ConvStem(cfg["width"], p, self.dtype, name="conv_stem")(images)
        elif self.stem == "hmlp":
            x = HMLPStem(cfg["width"], p, self.dtype, name="hmlp_stem")(images)
        elif self.stem in ("contrast", "patch+contrast"):
            x = ContrastStem(cfg["width"], p, self.stem == "patch+contrast", dtype=self.dtype,
                             name="contrast_stem")(images)
        else:
            x = nn.Conv(cfg["width"], (p, p), strides=(p, p), padding="VALID",
                        dtype=self.dtype, name="embedding")(images)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w, c))
        x = x + pos.astype(self.dtype)
        masks = None
        if self.attention_radius:
            radii = parse_radii(self.attention_radius, cfg["depth"])
            masks = [None if r < 0 else local_attention_mask(h, w, r) for r in radii]
        x = Encoder(cfg["depth"], cfg["mlp_dim"], cfg["num_heads"], self.dtype, name="encoder")(x, masks)
        return {"patches": x, "pooled": x.mean(axis=1), "grid": (h, w)}

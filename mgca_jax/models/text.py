"""Text Transformer tower.

Token ids follow the tokenizer's convention: 0 = pad, and each sequence ends
with an EOS token. Attention is bidirectional over the valid tokens; the pooled
feature is the feature at the EOS position (the last valid token).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mgca_jax.models.vit import Encoder, UnknownVariantError

# width, depth, mlp_dim, heads
SIZES = {
    "mu": dict(width=128, depth=3, mlp_dim=384, num_heads=4),
    "S": dict(width=256, depth=12, mlp_dim=1024, num_heads=4),   # GroupViT's text tower
    "B": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),   # CLIP's text tower
}


def parse_text_variant(variant: str) -> dict:
    if variant not in SIZES:
        raise UnknownVariantError(
            f"unknown text variant {variant!r}; known: {sorted(SIZES)}")
    return dict(SIZES[variant])


class TextTransformer(nn.Module):
    """tokens [B, L] int -> {"tokens": [B, L, width], "pooled": [B, width], "mask": [B, L]}."""
    variant: str = "mu"
    vocab_size: int = 1024
    max_len: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        cfg = parse_text_variant(self.variant)
        valid = tokens > 0
        x = nn.Embed(self.vocab_size, cfg["width"], name="token_embedding")(tokens)
        pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                         (1, self.max_len, cfg["width"]))
        x = (x + pos[:, : tokens.shape[1]]).astype(self.dtype)
        attn_mask = nn.make_attention_mask(valid, valid)
        x = Encoder(cfg["depth"], cfg["mlp_dim"], cfg["num_heads"], self.dtype, name="encoder")(
            x, attn_mask)
        last = jnp.maximum(valid.sum(axis=1) - 1, 0)
        pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        return {"tokens": x, "pooled": pooled, "mask": valid}

"""Two-tower model: ViT + text Transformer, projected into one joint space.

All outputs are unnormalised joint-space vectors; the losses and the inference
code normalise them. Shapes (B images, N patches, L tokens, K object words,
E joint dim):
  patch_embed [B, N, E], image_embed [B, E]  (image_embed = mean of patch_embed)
  token_embed [B, L, E], text_embed [B, E], token_mask [B, L]
  object_embed [B, K, E] (object-word prompts through the text tower)
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mgca_jax.models.text import TextTransformer
from mgca_jax.models.vit import ViT

MAX_LOGIT_SCALE = 100.0


class TwoTower(nn.Module):
    image_variant: str = "mu/8"
    text_variant: str = "mu"
    vocab_size: int = 1024
    max_len: int = 32
    embed_dim: int = 128
    temperature_init: float = 0.07
    image_stem: str = "patch"
    attention_radius: str = ""
    dtype: Any = jnp.float32
    object_prompt_slots: int = 0    # > 0: encode each distinct object prompt of a batch once

    def setup(self):
        self.image_tower = ViT(self.image_variant, self.dtype, self.image_stem, self.attention_radius)
        self.text_tower = TextTransformer(self.text_variant, self.vocab_size, self.max_len, self.dtype)
        # Linear heads: the mean of projected patches is the projected mean, so
        # dense and pooled embeddings live in one space.
        self.image_head = nn.Dense(self.embed_dim, name="image_head")
        self.text_head = nn.Dense(self.embed_dim, name="text_head")
        self.log_logit_scale = self.param(
            "log_logit_scale", nn.initializers.constant(np.log(1.0 / self.temperature_init)), ())

    def logit_scale(self):
        return jnp.minimum(jnp.exp(self.log_logit_scale), MAX_LOGIT_SCALE)

    def encode_image(self, images):
        out = self.image_tower(images)
        patch_embed = self.image_head(out["patches"]).astype(jnp.float32)
        return {"patch_embed": patch_embed, "image_embed": patch_embed.mean(axis=1),
                "grid": out["grid"]}

    def encode_text(self, tokens):
        out = self.text_tower(tokens)
        return {"token_embed": self.text_head(out["tokens"]).astype(jnp.float32),
                "text_embed": self.text_head(out["pooled"]).astype(jnp.float32),
                "token_mask": out["mask"]}

    def encode_prompts(self, prompts):
        """prompts [P, Lo] -> text_embed [P, E]. Object prompts repeat within a batch (one
        template around a word; empty slots are all padding): with `object_prompt_slots` = S,
        the first S distinct prompts go through the text tower once each and their
        embeddings are gathered back; a batch with more than S distinct prompts takes the
        plain path (lax.cond), so the result never depends on S."""
        s = self.object_prompt_slots
        if not s or s >= prompts.shape[0]:
            return self.encode_text(prompts)["text_embed"]
        distinct, inverse = jnp.unique(prompts, axis=0, size=s, fill_value=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        fits = jnp.all(distinct[inverse] == prompts)

        def once(mdl, distinct, inverse, prompts):
            return mdl.encode_text(distinct)["text_embed"][inverse]

        def plain(mdl, distinct, inverse, prompts):
            return mdl.encode_text(prompts)["text_embed"]
        return nn.cond(fits, once, plain, self, distinct, inverse, prompts)

    def __call__(self, batch, with_objects: bool = True):
        """batch: image [B,H,W,3], tokens [B,L], optional object_tokens [B,K,Lo]."""
        out = dict(self.encode_image(batch["image"]))
        out.update(self.encode_text(batch["tokens"]))
        if with_objects and "object_tokens" in batch:
            b, k, lo = batch["object_tokens"].shape
            out["object_embed"] = self.encode_prompts(
                batch["object_tokens"].reshape(b * k, lo)).reshape(b, k, -1)
        out["logit_scale"] = self.logit_scale()
        return out


def make_model(config) -> TwoTower:
    """Builds the model from `config.model` and the tokenizer's vocab size."""
    m = config.model
    return TwoTower(image_variant=m.image_variant, text_variant=m.text_variant,
                    vocab_size=m.vocab_size, max_len=config.input.max_len,
                    embed_dim=m.embed_dim, temperature_init=m.temperature_init,
                    image_stem=m.get("image_stem", "patch"),
                    attention_radius=str(m.get("attention_radius", "")),
                    dtype=jnp.dtype(m.get("dtype", "float32")),
                    object_prompt_slots=int(m.get("object_prompt_slots", 0)))


def random_params(model: TwoTower, image_size: int, num_tokens: int = 8, seed: int = 0) -> dict:
    """Random numpy params of the model's shapes, without compiling `model.init`
    (which takes seconds on CPU): LayerNorm scales 1, others N(0, 1/fan_in)."""
    batch = {"image": jnp.zeros((1, image_size, image_size, 3)),
             "tokens": jnp.ones((1, num_tokens), jnp.int32)}
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if "scale" in jax.tree_util.keystr(path):
            return np.ones(s.shape, s.dtype)
        std = 1 / np.sqrt(s.shape[-2]) if len(s.shape) >= 2 else 0.02
        return (std * rng.normal(size=s.shape)).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(draw, shapes)

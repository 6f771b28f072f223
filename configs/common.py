"""Fields shared by every config; each config file overrides what it changes.

MGCA_SMOKE=1 in the environment shrinks any config to a run of seconds (`smoke`):
the README's commands run that way in CI (tests/test_readme.py).
"""
import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data_dir = ""               # "" = ./data (created); an explicit dir must exist
    c.batch_size = 64             # global, over all devices and processes
    c.total_steps = 1000
    c.lr = 1e-3
    c.weight_decay = 0.05
    c.warmup_steps = 100
    c.grad_clip = 5.0
    c.nonfinite = "stop"          # non-finite loss/gradient: "stop" (exit 3) or "skip_step"
    c.b2 = 0.98

    c.data = ml_collections.ConfigDict()
    c.data.name = "mgca_scenes"
    c.data.config_name = "default"
    c.data.train_split = "train"
    c.data.eval_split = "validation"

    c.input = ml_collections.ConfigDict()
    c.input.image_size = 64
    c.input.max_len = 32              # caption tokens
    c.input.object_max_len = 12       # tokens of one object prompt
    c.input.num_objects = 4           # K object words per caption
    c.input.vocab_size = 512          # when the tokenizer is trained on the fly
    c.input.tokenizer = ""            # path to a SentencePiece model; "" = train and cache
    c.input.lexicon = ""              # "" = the shipped mgca_jax/data/lexicon/objects.txt
    c.input.object_extractor = "lexicon"
    c.input.object_template = "a photo of a {}."
    c.input.shuffle_buffer = 10_000
    # "{field}" is filled from config.input at run time, so overrides stay consistent.
    c.input.recolour_prob = 0.0       # recolour op: colour-transformed images, colour words cut
    c.input.pp_train = ("decode|recolour({recolour_prob})|flip_lr|normalize|tokenize({max_len})|object_words({num_objects})|"
                        "object_prompts({object_max_len})|"
                        "keep('image','tokens','object_ids','object_mask','object_tokens')")
    # uint8 images: the predict function (inference.Segmenter) resizes and normalises
    c.input.pp_eval = "decode|squeeze_mask|keep('image','mask')"

    c.model = ml_collections.ConfigDict()
    c.model.image_variant = "mu/8"
    c.model.image_stem = "patch"      # or another of vit.STEMS: "conv", "hmlp", "contrast", "patch+contrast"
    c.model.attention_radius = ""     # "" = global; "1,1,0,0" = per-block radius in patches
    c.model.text_variant = "mu"
    c.model.embed_dim = 128
    c.model.temperature_init = 0.07
    c.model.vocab_size = -1           # -1 = the tokenizer's
    c.model.dtype = "float32"           # "bfloat16": bf16 compute, float32 master weights
    c.model.object_prompt_slots = 0     # > 0: encode each distinct object prompt of a batch once

    c.loss = ml_collections.ConfigDict()
    c.loss.weights = ml_collections.ConfigDict(
        dict(image_text=1.0, object=0.0, region=0.0, pixel=0.0, background=0.0, presence=0.0))
    c.loss.image_text_pool = "mean"        # or "topk": mean of the best patches per caption
    c.loss.image_text_topk = 0.25          # fraction of patches for "topk"
    c.loss.object_temperature = 0.07       # <= 0: use the learnable logit scale
    c.loss.object_attn_temperature = 0.05  # attention pooling over patches
    c.loss.object_query = "own"            # or "candidate" (docs/method.md, object level)
    c.loss.object_chunk = 256              # candidate units pooled at once
    c.loss.presence_topk = 0.03            # presence: pooled fraction of patches per word
    c.loss.presence_margin = 0.3           # presence: cosine at which a word is 50 % present
    c.loss.presence_temperature = 0.1      # <= 0: the learnable logit scale
    c.loss.region_temperature = 0.0        # learnable, shared with image_text
    c.loss.region_num = 8                  # M regions
    c.loss.region_iters = 3                # soft k-means updates
    c.loss.region_assign_temperature = 0.1
    c.loss.region_chunk = 64               # images scored at once
    c.loss.pixel_temperature = 0.07
    c.loss.pixel_rule = "top_fraction"     # or "threshold"
    c.loss.pixel_top_fraction = 0.25
    c.loss.pixel_threshold = 0.3
    c.loss.pixel_anchors = 16              # anchor patches per image
    c.loss.pixel_hard_k = 8                # mined negatives per anchor / unit
    c.loss.pixel_chunk = 1024              # units scored at once when mining
    c.loss.background_margin = 0.3         # cosine; matches eval.bg_thresh
    c.loss.background_fraction = 0.5       # bottom fraction of an image's patches = pseudo background
    c.loss.background_anchors = 16         # per kind (object / background) per image

    c.sharding = ml_collections.ConfigDict()
    c.sharding.params = "replicated"  # or "fsdp"

    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0                  # 0 = only at the end
    c.eval.batch_size = 64
    c.eval.templates = "custom"       # TCL's 9 prompt templates
    c.eval.bg_thresh = 0.3
    c.eval.test_scale = 2.0           # short side and window / training size (the field's 448 / 224)
    c.eval.num_examples = 8           # rows in the PNG grid
    c.eval.class_names = ""           # "a,b,c"; "" = the data set's class names
    return c



def multi_grained_loss(c, image_text=1.0, object=1.0, region=1.0, pixel=1.0, background=0.0,
                       presence=0.0):
    """Switches on MGCA's full objective (weights per term)."""
    c.loss.weights = dict(image_text=image_text, object=object, region=region, pixel=pixel,
                          background=background, presence=presence)
    return c


def smoke(c):
    """With MGCA_SMOKE=1: 32 px, micro towers, batch 16, 3 steps; the data set and objective
    stay (the embedded data shrinks to its `tiny` config). Checks plumbing, means nothing."""
    if os.environ.get("MGCA_SMOKE", "") in ("", "0"):
        return c
    if c.data.name == "mgca_scenes":
        c.data.config_name = "tiny"
    c.batch_size, c.total_steps, c.warmup_steps = 16, 3, 1
    c.log_every, c.checkpoint_every = 1, 3
    c.input.image_size, c.input.max_len, c.input.object_max_len = 32, 16, 8
    c.input.shuffle_buffer = 64
    c.model.image_variant, c.model.text_variant, c.model.embed_dim = "mu/8", "mu", 64
    c.model.dtype = "float32"
    c.model.attention_radius = ""
    c.loss.region_num, c.loss.pixel_anchors, c.loss.background_anchors = 4, 4, 4
    c.eval.batch_size, c.eval.num_examples = 32, 4
    return c

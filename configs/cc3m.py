"""MGCA on CC3M at paper scale (full objective).

Build the data set and the tokenizer once (README, "Training on CC3M"), then on every host:

  python -m mgca_jax.main --config=configs/cc3m.py --workdir=/shared/runs/mgca_cc3m \
      --config.data_dir=/shared/tfds --config.input.tokenizer=/shared/spm_cc3m_16k.model

How the run finds its inputs:
- Images and captions: the prepared TFDS data set `cc3m` (config `default`) under
  `config.data_dir`, i.e. DATA_DIR/cc3m/default/1.0.0, written by
  `python -m mgca_jax.data.cc3m_builder --manual_dir=SHARDS --data_dir=DATA_DIR`.
  It must be a local or mounted path that every host can read (gs:// is not accepted).
- Tokenizer: `config.input.tokenizer`, a SentencePiece model trained once with
  `python -m mgca_jax.data.tokenizer --input=CAPTIONS --output=MODEL --vocab_size=16000`.
  Left empty, the run uses DATA_DIR/cc3m/default/1.0.0/spm_16000.model
  (`input.vocab_size`) and, if that file is missing, trains it there from the
  captions; on several hosts each would do so, so train it before the launch.
- Object words: extracted per caption inside the input pipeline (the `object_words`
  op of `pp_train`) by `config.input.object_extractor` ("lexicon") from
  `config.input.lexicon` ("" = the shipped mgca_jax/data/lexicon/objects.txt).

Where the values come from:
- Towers: ViT-S/16 at 224x224 and a 12-layer, 256-wide text Transformer with
  77 tokens, 256-d joint space: GroupViT's from-scratch recipe on CC3M-scale
  data (the public GroupViT configs, NVlabs/GroupViT).
- Tokenizer: 16000 SentencePiece pieces trained on the CC3M training captions
  (the embedded world's 512 is far too small for web captions).
- Optimiser: AdamW, lr 1.6e-3, weight decay 0.05, grad-clip 5.0, cosine decay
  with 2 warm-up epochs of 30, global batch 4096: GroupViT's recipe. CC3M has
  ~2.88M usable pairs, so one epoch is ~704 steps at 4096.
- Temperature: learnable, initialised at 0.07, logit scale capped at 100 (GroupViT/CLIP).
- Augmentation: random resized crop with scale 0.9-1.0 and horizontal flip
  (GroupViT's; a tighter crop keeps the objects the caption names in view), the crop
  resized without antialiasing (cheaper on the host; its effect on accuracy is not measured).
- MGCA term weights and temperatures: the project's choices (docs/method.md);
  the paper's values are not available. All five terms are on, the pixel-level
  ones (pixel, background contrast) at 0.3 as in the demo, the only measurement
  (docs/results.md: 0.3 beat 1 at 600 steps); image-text keeps mean pooling and
  global attention, as GroupViT/TCL do: the demo's top-k pooling and local
  attention were chosen for 64x64 scenes and are not measured at this scale.
Expected result: not yet measured (no accelerator here); see docs/results.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

EPOCH_STEPS = 2_881_393 // 4096  # TCL's count of usable CC3M pairs


def get_config():
    c = common.multi_grained_loss(common.base_config(), pixel=0.3, background=0.3)
    c.data.name = "cc3m"
    c.data.config_name = "default"
    c.data.eval_split = ""
    c.batch_size = 4096
    c.total_steps = 30 * EPOCH_STEPS
    c.warmup_steps = 2 * EPOCH_STEPS
    c.lr = 1.6e-3
    c.weight_decay = 0.05
    c.grad_clip = 5.0

    c.input.image_size = 224
    c.input.max_len = 77
    c.input.object_max_len = 16
    c.input.num_objects = 4
    c.input.vocab_size = 16_000        # pieces of the cached tokenizer; the model takes the loaded one's size
    c.input.tokenizer = ""             # the trained model; "" = DATA_DIR/cc3m/default/1.0.0/spm_16000.model
    c.input.shuffle_buffer = 250_000
    # antialias=False: a plain bilinear resize of the crop; with it the chain runs ~2.1-2.75x the
    # host images/s of the old one, ~1.4-1.7x without it (docs/results.md, "Cheaper host paths")
    c.input.pp_train = ("decode|random_resized_crop({image_size}, 0.9, 1.0, antialias=False)|"
                        "flip_lr|normalize|"
                        "tokenize({max_len})|object_words({num_objects})|"
                        "object_prompts({object_max_len})|"
                        "keep('image','tokens','object_ids','object_mask','object_tokens')")

    c.model.image_variant = "S/16"
    c.model.text_variant = "S"
    c.model.embed_dim = 256
    c.model.dtype = "bfloat16"

    c.loss.region_chunk = 128
    c.loss.pixel_chunk = 4096

    c.log_every = 100
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.eval.every = 0                   # CC3M has no masks; evaluate with mgca_jax.evaluate
    return common.smoke(c)

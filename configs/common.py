"""Fields shared by every config; each config file overrides what it changes."""
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
    c.input.pp_train = ("decode|flip_lr|normalize|tokenize({max_len})|object_words({num_objects})|"
                        "object_prompts({object_max_len})|"
                        "keep('image','tokens','object_ids','object_mask','object_tokens')")
    c.input.pp_eval = "decode|normalize|squeeze_mask|keep('image','mask')"

    c.model = ml_collections.ConfigDict()
    c.model.image_variant = "mu/8"
    c.model.text_variant = "mu"
    c.model.embed_dim = 128
    c.model.temperature_init = 0.07
    c.model.vocab_size = -1           # -1 = the tokenizer's
    c.model.dtype = "float32"

    c.loss = ml_collections.ConfigDict()
    c.loss.weights = ml_collections.ConfigDict(dict(image_text=1.0))

    c.sharding = ml_collections.ConfigDict()
    c.sharding.params = "replicated"  # or "fsdp"

    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0                  # 0 = only at the end
    c.eval.batch_size = 64
    c.eval.templates = "custom"       # TCL's 9 prompt templates
    c.eval.bg_score = "cosine"
    c.eval.bg_thresh = 0.3
    c.eval.num_examples = 8
    c.eval.class_names = ""           # "a,b,c"; "" = the data set's class names           # rows in the PNG grid
    return c


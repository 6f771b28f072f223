"""`python -m mgca_jax.export` and `mgca_jax.load`: parity with the orbax path, use from user JAX
code, pickle-free reading, and bad exports."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

import mgca_jax  # noqa: E402
from mgca_jax import api, checkpoints, inference  # noqa: E402
from mgca_jax.data import scenes  # noqa: E402
from mgca_jax.evaluation import protocol  # noqa: E402

from test_inference_cli import FAST, random_run, voc_dir  # noqa: E402,F401  (shared fixtures)

CLASSES = ["circle", "square", "triangle"]


def run(*args, cwd=ROOT):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run directory as train.py leaves it (config.json, checkpoints/7, eval_step7.json)."""
    wd = random_run(tmp_path_factory.mktemp("run"), step=7, seed=3)
    (wd / "eval_step7.json").write_text(json.dumps({"step": 7, "miou": 0.25, "iou": {}}))
    return wd


@pytest.fixture(scope="module")
def export_dir(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny"
    r = run("-m", "mgca_jax.export", f"--workdir={workdir}", f"--out={out}")
    assert r.returncode == 0, r.stderr
    assert f"exported step 7" in r.stdout
    return out


@pytest.fixture(scope="module")
def model(export_dir):
    return mgca_jax.load(str(export_dir))


def images(n=2, size=48, seed=5):
    return [scenes.make_example(seed, i, size)["image"] for i in range(n)]


def test_export_directory_contents(export_dir, workdir):
    names = sorted(os.listdir(export_dir))
    assert names == sorted(api.FILES + (api.SUMS,))
    assert not [n for n in os.listdir(export_dir.parent) if ".tmp-" in n or ".old-" in n]
    sums = dict(reversed(line.split()) for line in (export_dir / api.SUMS).read_text().splitlines())
    for name in api.FILES:      # independent re-hash
        assert hashlib.sha256((export_dir / name).read_bytes()).hexdigest() == sums[name]
    meta = json.loads((export_dir / api.CONFIG).read_text())
    assert meta["format_version"] == 1
    assert meta["preprocessing"]["image_size"] == 32 and meta["preprocessing"]["patch_size"] == 8
    # Trained at 32 px: the field's 448/448/224 at 224 px, scaled to 32 px.
    assert meta["protocol"] == {"short_side": 64, "max_long": 256, "crop": 64, "stride": 32}
    assert meta["prompts"]["templates"] == list(protocol.get_templates("custom"))
    assert meta["provenance"]["step"] == 7
    assert meta["provenance"]["train_config"]["model"]["vocab_size"] == meta["model"]["vocab_size"]
    assert meta["evaluation"]["eval_step7.json"]["miou"] == 0.25
    assert (export_dir / api.TOKENIZER).read_bytes() == open(
        meta["provenance"]["train_config"]["input"]["tokenizer"], "rb").read()
    assert "mIoU 25.00 %" in (export_dir / api.CARD).read_text()


def test_read_without_mgca_jax_or_pickle(export_dir, workdir):
    """safetensors.numpy + json alone rebuild the parameter tree's shapes."""
    script = textwrap.dedent(f"""
        import json, sys
        from safetensors.numpy import load_file
        flat = load_file({str(export_dir / api.PARAMS)!r})
        tree = {{}}
        for key, value in flat.items():
            node = tree
            *parents, last = key.split("/")
            for p in parents:
                node = node.setdefault(p, {{}})
            node[last] = list(value.shape)
        meta = json.load(open({str(export_dir / api.CONFIG)!r}))
        assert not [m for m in sys.modules if m.startswith("mgca_jax")]
        print(json.dumps({{"tree": tree, "vocab": meta["model"]["vocab_size"]}}))
    """)
    r = run("-c", script, cwd=str(export_dir))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    loaded = checkpoints.load(str(workdir))
    want = jax.tree.map(lambda a: list(np.shape(a)), loaded.params)
    assert got["tree"] == want
    assert got["vocab"] == loaded.config.model.vocab_size


def test_parity_with_the_orbax_path(model, workdir):
    loaded = checkpoints.load(str(workdir))
    tok = checkpoints.load_tokenizer(loaded.config)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)
    imgs = images(2, 32)
    x = jnp.asarray(np.stack([protocol.normalize(i) for i in imgs]))
    m = loaded.model
    ref = jax.jit(lambda p, x: m.apply({"params": p}, x, method=m.encode_image))(loaded.params, x)
    np.testing.assert_array_equal(model.encode_image(imgs), ref["image_embed"])
    np.testing.assert_array_equal(model.patch_embeddings(imgs).reshape(ref["patch_embed"].shape),
                                  ref["patch_embed"])
    texts = ["a photo of a circle.", "a red square and a star"]
    tokens = jnp.asarray([tok.encode(t, loaded.config.input.max_len) for t in texts])
    ref_t = jax.jit(lambda p, t: m.apply({"params": p}, t, method=m.encode_text))(loaded.params, tokens)
    np.testing.assert_array_equal(model.encode_text(texts), ref_t["text_embed"])
    # Segmentation labels: the orbax path through the same Segmenter the tools use.
    templates = protocol.get_templates(loaded.config.eval.templates)
    seg = inference.make_segmenter(loaded.model, loaded.params, tok, CLASSES, templates,
                                   loaded.config.input.max_len,
                                   protocol_config=inference.ProtocolConfig(64, 256, 64, 32),
                                   bg_thresh=loaded.config.eval.bg_thresh)
    big = images(2, 80)
    want = seg.predict_fn()(big)
    got = model.segment(big, CLASSES)
    for g, w, img in zip(got, want, big):
        assert g.shape == img.shape[:2] and g.dtype == np.int32
        np.testing.assert_array_equal(g, w)


def test_class_embeddings_match_a_float64_prompt_ensemble(model):
    templates = ["a photo of a {}.", "art of the {}."]
    got = np.asarray(model.class_embeddings(CLASSES, templates), np.float64)
    raw = np.asarray(model.encode_text([t.format(c) for c in CLASSES for t in templates]), np.float64)
    raw = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
    mean = raw.reshape(len(CLASSES), len(templates), -1).mean(1)
    want = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


def test_any_size_and_batch(model):
    a, b = images(1, 32)[0], images(1, 57, seed=9)[0][:50]       # 32x32 and 50x57
    assert model.encode_image([a, b]).shape == (2, model.meta["model"]["embed_dim"])
    assert model.patch_embeddings(np.stack([a, a, a])).shape == (3, 4, 4, 128)
    emb = model.encode_image(a[None], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    labels = model.segment([b], CLASSES, unit="pixel", bg_thresh=None)
    assert labels[0].shape == (50, 57) and labels[0].max() < len(CLASSES)


def test_downstream_jit_grad_vmap(model):
    """How a user's code composes the exported towers with a head of its own."""
    head = {"w": jax.random.normal(jax.random.key(0), (128, 2)) * 0.1, "b": jnp.zeros(2)}
    x = model.preprocess(images(4, 32))                             # [4, 32, 32, 3]
    y = jnp.array([0, 1, 1, 0])

    @jax.jit
    def logits(params, head, x):
        patches = model.apply(params, images=x)["patch_embed"]      # [B, N, E]
        return patches.mean(1) @ head["w"] + head["b"]

    def loss(head, params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(params, head, x), y).mean()

    out = logits(model.params, head, x)
    assert out.shape == (4, 2) and np.isfinite(out).all()
    g_head = jax.grad(loss)(head, model.params, x, y)
    assert float(jnp.abs(g_head["w"]).sum()) > 0
    # Gradient through the image tower with respect to a user parameter (an input offset).
    g_offset = jax.grad(lambda off: loss(head, model.params, x + off, y))(jnp.zeros(3))
    assert g_offset.shape == (3,) and float(jnp.abs(g_offset).sum()) > 0
    g_x = jax.grad(lambda x: loss(head, model.params, x, y))(x)       # chain rule: sum over pixels
    np.testing.assert_allclose(g_offset, g_x.sum((0, 1, 2)), rtol=1e-4, atol=1e-6)
    # vmap over the batch equals the batched call.
    per_image = jax.vmap(lambda xi: logits(model.params, head, xi[None])[0])(x)
    np.testing.assert_allclose(per_image, out, rtol=1e-5, atol=1e-6)


def test_api_does_not_import_tensorflow(export_dir, tmp_path):
    """benchmarks/api_timing.py in a fresh process: import mgca_jax, load, and first and
    later calls of encode_text, encode_image and segment, without TensorFlow."""
    out = tmp_path / "timing.json"
    r = run("benchmarks/api_timing.py", f"--export={export_dir}", "--repeat=1", f"--out={out}")
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    fig = json.loads(out.read_text())
    assert fig["tensorflow_imported"] == []
    for call in ("encode_text", "encode_image", "segment"):
        assert 0 < fig[f"{call}_later_s"] and 0 < fig[f"{call}_first_s"] < fig["process_s"]
    r = run("benchmarks/api_timing.py", f"--export={tmp_path / 'nope'}")
    assert r.returncode == 2 and "--export" in r.stderr


def copy_export(export_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(export_dir, d)
    return d


def resum(d):
    (d / api.SUMS).write_text("".join(
        f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n" for n in api.FILES))


def test_tampered_byte_is_named(export_dir, tmp_path):
    d = copy_export(export_dir, tmp_path)
    data = bytearray((d / api.PARAMS).read_bytes())
    data[-5] ^= 1
    (d / api.PARAMS).write_bytes(bytes(data))
    with pytest.raises(api.ExportError, match=r"params\.safetensors: SHA-256 does not match"):
        mgca_jax.load(str(d))


def test_missing_tokenizer_is_named(export_dir, tmp_path):
    d = copy_export(export_dir, tmp_path)
    os.remove(d / api.TOKENIZER)
    with pytest.raises(api.ExportError, match=r"tokenizer\.model: missing"):
        mgca_jax.load(str(d))


def test_unknown_format_version_is_named(export_dir, tmp_path):
    d = copy_export(export_dir, tmp_path)
    meta = json.loads((d / api.CONFIG).read_text())
    meta["format_version"] = 99
    (d / api.CONFIG).write_text(json.dumps(meta))
    with pytest.raises(api.ExportError, match="config.json: SHA-256"):   # checksums first
        mgca_jax.load(str(d))
    resum(d)
    with pytest.raises(api.ExportError, match=r"config\.json: format 'mgca_jax.export' version 99"):
        mgca_jax.load(str(d))


@pytest.mark.parametrize("change", ["missing", "shape"])
def test_missing_or_misshaped_key_is_named(export_dir, tmp_path, change):
    from safetensors.numpy import load_file, save_file
    d = copy_export(export_dir, tmp_path)
    flat = load_file(str(d / api.PARAMS))
    key = "image_head/kernel"
    if change == "missing":
        del flat[key]
    else:
        flat[key] = flat[key][:, :-1]
    save_file(flat, str(d / api.PARAMS), metadata={"format": api.FORMAT, "format_version": "1"})
    resum(d)
    msg = (r"parameter 'image_head/kernel' missing" if change == "missing"
           else r"parameter 'image_head/kernel' is float32\[.*, 127\], the config builds float32\[.*, 128\]")
    with pytest.raises(api.ExportError, match=msg):
        mgca_jax.load(str(d))


def test_existing_out_is_refused_and_untouched(workdir, export_dir):
    before = {n: (export_dir / n).read_bytes() for n in os.listdir(export_dir)}
    r = run("-m", "mgca_jax.export", f"--workdir={workdir}", f"--out={export_dir}")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert re.fullmatch(r"error: --out: .* is not empty \(pass --overwrite to replace it\)", r.stderr.strip())
    assert {n: (export_dir / n).read_bytes() for n in os.listdir(export_dir)} == before


def test_overwrite_replaces_atomically(workdir, tmp_path):
    out = tmp_path / "e"
    assert run("-m", "mgca_jax.export", f"--workdir={workdir}", f"--out={out}").returncode == 0
    (out / "stale.txt").write_text("old")
    r = run("-m", "mgca_jax.export", f"--workdir={workdir}", f"--out={out}", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == sorted(api.FILES + (api.SUMS,))
    assert sorted(os.listdir(tmp_path)) == ["e"]
    mgca_jax.load(str(out))


def test_tools_read_an_export_like_the_workdir(workdir, export_dir, voc_dir, tmp_path):
    """evaluate --export gives the same figures as evaluate --workdir; segment --export runs."""
    common = ["--dataset=voc21", f"--data_dir={voc_dir}", "--unit=all", "--bootstrap=0", *FAST]
    a, b = tmp_path / "workdir.json", tmp_path / "export.json"
    r = run("-m", "mgca_jax.evaluate", f"--workdir={workdir}", f"--out={a}", *common)
    assert r.returncode == 0, r.stderr
    r = run("-m", "mgca_jax.evaluate", f"--export={export_dir}", f"--out={b}", *common)
    assert r.returncode == 0, r.stderr
    ra, rb = (json.loads(p.read_text())["results"]["voc21"]["units"] for p in (a, b))
    assert ra == rb and all(np.isfinite(u["miou"]) for u in ra.values())
    r = run("-m", "mgca_jax.evaluate", f"--export={export_dir}", *common)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --out: required with --export (the export directory is never written to)")
    r = run("-m", "mgca_jax.evaluate", f"--export={export_dir}", f"--workdir={workdir}",
            f"--out={b}", *common)
    assert r.returncode == 2 and "pass exactly one of --workdir" in r.stderr
    out = tmp_path / "seg"
    image = voc_dir / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000000.jpg"
    r = run("-m", "mgca_jax.segment", f"--export={export_dir}", f"--image={image}",
            "--classes=circle,square", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    assert (out / "2008_000000_labels.png").exists()


def test_parity_script_reports_a_mismatch(export_dir, tmp_path):
    """benchmarks/export_parity.py exits 1 when the export is not the workdir's model
    (another random run), and 2 naming --workdir when that is not a run."""
    other = random_run(tmp_path, step=7, seed=4)
    r = run("benchmarks/export_parity.py", f"--workdir={other}", f"--export={export_dir}",
            "--skip_miou", "--images=2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "encode_image max |diff| 0 " not in r.stdout and "MISMATCH" in r.stdout
    r = run("benchmarks/export_parity.py", f"--workdir={tmp_path / 'nope'}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--workdir" in r.stderr


def test_jax_export_window_scorer_matches_the_segmenter(workdir, tmp_path):
    """`export --jax_export`: the deserialized per-window scorer (symbolic window and class
    counts) gives the Segmenter's window scores for all three units."""
    out = tmp_path / "jx"
    r = run("-m", "mgca_jax.export", f"--workdir={workdir}", f"--out={out}", "--jax_export")
    assert r.returncode == 0, r.stderr
    model = mgca_jax.load(str(out))
    entry = model.meta["jax_export"]
    assert entry["crop"] == model.meta["protocol"]["crop"] and "6 months" in entry["compatibility"]
    scorer = api.load_window_scorer(str(out))
    crop = entry["crop"]
    crops = np.stack([protocol.normalize(i) for i in images(5, crop, seed=9)])
    for classes in (CLASSES, CLASSES[:2]):
        emb = model.class_embeddings(classes)
        got = np.asarray(scorer.call(model.params, jnp.asarray(crops), emb))
        seg = inference.Segmenter(model.module, model.params, emb, units=inference.UNITS,
                                  bg_thresh=entry["bg_thresh"], windows_per_device=2)
        want = seg.window_scores(crops)
        assert got.shape == want.shape == (3, 5, crop // 8, crop // 8, len(classes))
        assert np.ptp(want) > 0.1
        # The pixel unit is a continuous function of the crop: equal to float rounding.
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
        # Group and adaptive units make discrete choices (which patches merge); the two
        # compilations round differently (~1e-7), which can flip a near-tie choice on some
        # CPUs (seen on an AMD EPYC, not on an Intel Xeon). Most scores stay equal and the
        # labels they give agree almost everywhere; another model's scores would not.
        for u in (1, 2):
            close = np.abs(got[u] - want[u]) <= 1e-6
            same_label = got[u].argmax(-1) == want[u].argmax(-1)
            assert close.mean() >= 0.75 and same_label.mean() >= 0.95, (u, close.mean(), same_label.mean())
    data = bytearray((out / api.WINDOW_SCORER).read_bytes())
    data[len(data) // 2] ^= 0xFF                                 # one flipped byte
    (out / api.WINDOW_SCORER).write_bytes(bytes(data))
    with pytest.raises(api.ExportError, match="window_scorer.jax: SHA-256"):
        api.load_window_scorer(str(out))

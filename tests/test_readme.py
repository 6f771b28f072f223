"""Every shell command in README.md's code blocks, run verbatim (issue 16).

The commands run in order, each in a fresh `bash` in a copy of the repository, with only
environment variables the README documents: `MGCA_SMOKE=1` (configs shrink to a smoke run) and
`SHARED` (the shared folder of "Training on CC3M"). Tools that need the network or a cluster are
stubs on PATH that record their arguments; the test checks those flags and files afterwards:
`pip` (install and download), `gcloud`, `sbatch`, and `img2dataset`, whose stub also
"downloads" the caption TSV into webdataset tars (images made from the URL, bad samples
planted). The GPU check (`benchmarks/device_check.sh`) runs on CPU at its smoke size. Benchmark layouts are written
here from the layouts the README and the readers' docstring name, not with the readers' code.

A command that fails names its README line. `$ ` lines in an indented block are commands whose
expected stderr follows them (exit status 2, nothing written).
"""
import csv
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NOISE = ("oneDNN custom operations", "cudart_stub", "absl::InitializeLog", "\x1b[", "\r")


@dataclass
class Command:
    line: int                      # 1-based line in README.md
    text: str
    expected: list = field(default_factory=list)   # stderr lines for `$ ` commands
    shell_prompt: bool = False


def _join_continuations(lines):
    """[(line_no, text)] -> commands, joining backslash continuations, dropping comments."""
    out, buf, start = [], "", None
    for no, text in lines:
        if not buf and (not text.strip() or text.strip().startswith("#")):
            continue
        start = start or no
        if text.rstrip().endswith("\\"):
            buf += text.rstrip()[:-1].strip() + " "
            continue
        out.append(Command(start, buf + text.strip()))
        buf, start = "", None
    return out


def readme_commands(text: str) -> list[Command]:
    """Shell commands of the fenced (```bash) and indented (4 spaces after a blank line) blocks."""
    lines = text.splitlines()
    commands, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            if lang in ("bash", "sh", "shell", ""):
                commands += _join_continuations([(k + 1, lines[k]) for k in range(i + 1, j)])
            i = j + 1
            continue
        if line.startswith("    ") and i > 0 and not lines[i - 1].strip():
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = [(k + 1, lines[k][4:]) for k in range(i, j)]
            if any(t.startswith("$ ") for _, t in block):
                for no, t in block:
                    if t.startswith("$ "):
                        commands.append(Command(no, t[2:].strip(), shell_prompt=True))
                    elif t.strip():
                        commands[-1].expected.append(t.strip())
            else:
                commands += _join_continuations(block)
            i = j
            continue
        i += 1
    return commands


def python_block(text: str, heading: str) -> str:
    """The first ```python block after `heading`."""
    rest = text[text.index(heading):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


# ----------------------------------------------------------------------------- stubs

STUB_RECORD = '''#!{python}
import json, os, sys
with open(os.environ["README_STUB_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
'''

GCLOUD_EXTRA = '''
args = sys.argv[1:]
if "describe" in args:
    print(4)                                   # workers of the pod
if "scp" in args and ":" in args[-2] and ":" not in args[-1]:
    os.makedirs(os.path.dirname(args[-1]) or ".", exist_ok=True)
    open(args[-1], "w").write("stub log\\n")  # remote -> local copy
'''

IMG2DATASET = '''
# Stands in for img2dataset: its flags (those the README uses plus a few), the TSV's named
# columns, webdataset output KEY.jpg + KEY.txt + KEY.json per sample, {shard:05d}.tar names,
# failed downloads left out. The "download" of fixture://KIND/SEED/HxW makes the image here.
import argparse, csv, io, tarfile
import numpy as np
from PIL import Image
p = argparse.ArgumentParser(prog="img2dataset")
p.add_argument("--url_list", required=True)
p.add_argument("--input_format", choices=["txt", "csv", "tsv", "tsv.gz", "json", "parquet"], default="txt")
p.add_argument("--url_col", default="url")
p.add_argument("--caption_col", default=None)
p.add_argument("--output_format", choices=["files", "webdataset", "parquet", "tfrecord", "dummy"], default="files")
p.add_argument("--output_folder", default="images")
p.add_argument("--processes_count", type=int, default=1)
p.add_argument("--thread_count", type=int, default=256)
p.add_argument("--image_size", type=int, default=256)
p.add_argument("--resize_mode", choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"], default="border")
p.add_argument("--resize_only_if_bigger", choices=["True", "False"], default="False")
p.add_argument("--enable_wandb", choices=["True", "False"], default="False")
a = p.parse_args()
assert a.input_format == "tsv" and a.output_format == "webdataset", "the README's formats"
rows = list(csv.DictReader(open(a.url_list, encoding="utf-8"), delimiter="\\t"))
missing = {a.url_col, a.caption_col} - set(rows[0] if rows else ())
if missing:
    sys.exit(f"img2dataset: column(s) {sorted(missing)} not in {a.url_list}'s header")

def image(kind, seed, h, w):
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.integers(0, 200, (1, 1, 3)) + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)
    im, fmt = Image.fromarray(arr), "JPEG"
    if a.resize_mode == "keep_ratio" and (min(h, w) > a.image_size or a.resize_only_if_bigger == "False"):
        s = a.image_size / min(h, w)
        im = im.resize((round(w * s), round(h * s)))
    if kind == "gray":
        im = im.convert("L")
    elif kind == "cmyk":
        im = im.convert("CMYK")
    elif kind == "alpha":
        im, fmt = im.convert("RGBA"), "PNG"
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    data = buf.getvalue()
    return {"corrupt": b"<html>404</html>" * 20, "truncated": data[: len(data) // 2]}.get(kind, data)

os.makedirs(a.output_folder, exist_ok=True)
per_shard = 20                                 # img2dataset's default is 10000
for shard in range(0, (len(rows) + per_shard - 1) // per_shard):
    with tarfile.open(os.path.join(a.output_folder, f"{shard:05d}.tar"), "w") as tar:
        for i, row in enumerate(rows[shard * per_shard:(shard + 1) * per_shard]):
            kind, seed, hw = row[a.url_col].split("://")[1].split("/")
            if kind == "dead":
                continue                       # failed download: not written
            key = f"{shard:05d}{i:04d}"
            h, w = map(int, hw.split("x"))
            cap = row[a.caption_col]
            files = {"jpg": image(kind, int(seed), h, w),
                     "txt": cap.encode("latin-1") if kind == "latin1" else cap.encode("utf-8"),
                     "json": json.dumps({"key": key, "url": row[a.url_col], "status": "success"}).encode()}
            if kind == "nocaption":
                del files["txt"]
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    json.dump({"count": per_shard}, open(os.path.join(a.output_folder, f"{shard:05d}_stats.json"), "w"))
'''

# The fixture TSV: 40 rows, 33 good samples, planted bad ones (what the build must report).
OBJECTS = ("dog", "cat", "car", "tree", "chair", "bird", "boat", "horse", "bottle", "person", "sofa")
PLANTED = {  # kind -> build reason
    "gray": "converted_grayscale", "cmyk": "converted_cmyk", "alpha": "converted_alpha",
    "corrupt": "corrupt_image", "truncated": "truncated_image", "tiny": "too_small",
    "wide": "extreme_aspect_ratio", "empty": "empty_caption", "latin1": "non_utf8_caption",
    "nocaption": "missing_caption", "dead": None,
}


def fixture_rows():
    rows = []
    for i in range(29):
        a, b = OBJECTS[i % len(OBJECTS)], OBJECTS[(3 * i + 1) % len(OBJECTS)]
        rows.append((f"a {a} next to a {b}, photo {i}", f"fixture://ok/{i}/{40 + i % 5 * 8}x{48 + i % 3 * 8}"))
    for j, kind in enumerate(PLANTED):
        size = {"tiny": "20x24", "wide": "40x440"}.get(kind, "48x56")
        caption = "" if kind == "empty" else f"caf\u00e9 {kind} sample {j}"
        url_kind = "ok" if kind in ("tiny", "wide", "empty") else kind   # the image itself is fine
        rows.append((caption, f"fixture://{url_kind}/{100 + j}/{size}"))
    return rows


def write_benchmarks(root: Path):
    """Two images per benchmark, in the official layouts (README, mgca_jax/evaluation/benchmarks.py)."""
    rng = np.random.default_rng(0)

    def pair(img_path, label_path, max_label):
        img_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(img_path)
        label = rng.integers(0, max_label + 1, (40, 56)).astype(np.uint8)
        label[:4] = 255
        Image.fromarray(label, "L").save(label_path)

    voc = root / "VOCdevkit" / "VOC2012"
    names = ["2007_000033", "2007_000042"]
    for n in names:
        pair(voc / "JPEGImages" / f"{n}.jpg", voc / "SegmentationClass" / f"{n}.png", 20)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    for n in ("frankfurt_000000_000294", "lindau_000001_000019"):
        city = n.split("_")[0]
        pair(root / "cityscapes" / "leftImg8bit" / "val" / city / f"{n}_leftImg8bit.png",
             root / "cityscapes" / "gtFine" / "val" / city / f"{n}_gtFine_labelTrainIds.png", 18)
    return {"voc21", "voc20", "cityscapes"}  # ADE20K, COCO: 150+ class names cost minutes here


# ----------------------------------------------------------------------------- checks of stub calls

GCLOUD_FLAGS = {"create": {"--zone", "--accelerator-type", "--version"},
                "ssh": {"--zone", "--worker", "--command"},
                "scp": {"--zone", "--worker", "--recurse"},
                "describe": {"--zone", "--format"}, "delete": {"--zone", "--quiet"}}
SBATCH_FLAGS = {"--nodes", "--cpus-per-task", "--ntasks-per-node", "--gpus-per-node", "--time",
                "--job-name", "--output", "--signal", "--partition", "--account"}


def _flag_names(args):
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def check_trainer_flags(args, cwd: Path):
    """--config file exists, every --config.a.b names a field, --workdir given and not a URL."""
    values = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert set(values) >= {"config", "workdir"}, args
    assert "://" not in values["workdir"], args
    spec = importlib.util.spec_from_file_location("cfg", cwd / values["config"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for name in values:
        if name.startswith("config."):
            node = config
            for part in name.split(".")[1:]:
                assert part in node, f"{name}: no field {part!r}"
                node = node[part]


def check_stub_call(call, cwd: Path):
    tool, args = call[0], call[1:]
    if tool == "gcloud":
        assert args[:3] == ["compute", "tpus", "tpu-vm"] and args[3] in GCLOUD_FLAGS, call
        assert _flag_names(args[4:]) <= GCLOUD_FLAGS[args[3]], call
        if args[3] == "ssh":
            command = args[args.index("--command") + 1]
            if "mgca_jax.main" in command:
                trainer = shlex.split(command.split("mgca_jax.main", 1)[1].split(">")[0])
                check_trainer_flags(trainer, cwd)
    elif tool == "sbatch":
        script = next(i for i, a in enumerate(args) if not a.startswith("-"))
        assert _flag_names(args[:script]) <= SBATCH_FLAGS, call
        assert (cwd / args[script]).is_file(), call
        check_trainer_flags(args[script + 1:], cwd)
    elif tool == "pip" and args[0] == "download":      # benchmarks/device_check.sh --fetch_wheels
        assert {"--no-deps", "--only-binary=:all:", "-d"} <= set(args), call
        pins = dict(a.split("==") for a in args if "==" in a)
        assert {"ml_collections", "open_clip_torch", "ftfy"} <= set(pins), call
        assert f"ml_collections=={pins['ml_collections']}" in (cwd / "setup.py").read_text(), call
    elif tool == "pip":
        assert args[0] == "install", call
        if "-c" in args:
            lock = (cwd / args[args.index("-c") + 1]).read_text()
            assert (cwd / args[args.index("-e") + 1] / "setup.py").is_file(), call
            for pin in (a for a in args if a.startswith("jax[")):
                assert f"jax=={pin.split('==')[1]}" in lock, (pin, "not the locked jax")
        elif args[1:] == ["."]:
            assert (cwd / "setup.py").is_file(), call           # plain `pip install .`
        else:
            assert args[1:] == ["img2dataset"], call


# ----------------------------------------------------------------------------- the test

def _repo_copy(dest: Path) -> Path:
    def skip(folder, names):
        top = {".git", ".venv", "data", "workdirs", "logs"} if Path(folder) == REPO else set()
        return {n for n in names if n in top or n in ("__pycache__", ".pytest_cache")
                or n.endswith(".egg-info")}
    shutil.copytree(REPO, dest, ignore=skip)
    (dest / ".venv").symlink_to((REPO / ".venv").resolve())
    return dest


def test_every_readme_command_runs(tmp_path):
    commands = readme_commands((REPO / "README.md").read_text())
    root = _repo_copy(tmp_path / "repo")
    shared = tmp_path / "shared"
    shared.mkdir()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    log = tmp_path / "stub_calls.jsonl"
    for tool, extra in (("pip", ""), ("sbatch", ""), ("gcloud", GCLOUD_EXTRA), ("img2dataset", IMG2DATASET)):
        path = stubs / tool
        path.write_text(STUB_RECORD.format(python=sys.executable) + extra)
        path.chmod(0o755)
    if not shutil.which("python3.11"):
        (stubs / "python3.11").symlink_to(sys.executable)
    with open(root / "Train_GCC-training.tsv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(fixture_rows())
    scored = write_benchmarks(shared / "benchmarks")

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VIRTUAL_ENV")}
    env.update(MGCA_SMOKE="1", SHARED=str(shared), README_STUB_LOG=str(log), PYTHONPATH=str(root),
               PATH=f"{stubs}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    ci = (REPO / ".ci" / "run").read_text()
    times, ran, checked = {}, 0, 0
    for cmd in commands:
        where = f"README.md:{cmd.line}: {cmd.text}"
        if cmd.text == "./run.sh python -m pytest -q tests":
            assert cmd.text in ci, f"{where}: not what .ci/run runs"  # CI runs it: this very suite
            continue
        calls_before = log.read_text().count("\n") if log.exists() else 0
        before = sorted(os.listdir(root))
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-c", "set -eo pipefail\n" + cmd.text], cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        times[cmd.line] = time.perf_counter() - t0
        ran += 1
        tail = f"\n--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
        if cmd.shell_prompt:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode == 2, f"{where}: exit {proc.returncode}, README shows an error{tail}"
            assert len(lines) == len(cmd.expected) == 1, f"{where}: stderr is not one line{tail}"
            want = cmd.expected[0]
            ok = lines[0].startswith(want[:-3].rstrip()) if want.endswith("...") else lines[0] == want
            assert ok, f"{where}: README says {want!r}, got {lines[0]!r}"
            assert sorted(os.listdir(root)) == before, f"{where}: wrote {set(os.listdir(root)) - set(before)}"
        else:
            assert proc.returncode == 0, f"{where}: exit {proc.returncode}{tail}"
        for noise in NOISE:
            assert noise not in proc.stdout + proc.stderr, f"{where}: prints {noise!r}{tail}"
        progress = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
        assert all(a != b for a, b in zip(progress, progress[1:])), f"{where}: a progress line twice"
        new_calls = log.read_text().splitlines()[calls_before:] if log.exists() else []
        for call in new_calls:
            try:
                check_stub_call(json.loads(call), root)
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from None
        checked += bool(new_calls)

    # The Python example of "Use a trained model in your JAX code", verbatim, on the export made above.
    example = python_block((REPO / "README.md").read_text(), "## Use a trained model in your JAX code")
    proc = subprocess.run([sys.executable, "-c", example], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README.md: the export example fails:\n{proc.stderr[-3000:]}"
    assert proc.stdout.split("\n")[0].startswith("(120, 160) (1, "), proc.stdout

    print(f"\nREADME: {len(commands)} commands: {ran} run ({checked} through the stubs, flags checked), "
          f"{len(commands) - ran} checked against .ci/run; {sum(times.values()):.1f}s")
    for line, t in times.items():
        print(f"  README.md:{line}  {t:6.1f}s")

    # What the CC3M commands produced, checked against the planted fixture.
    report = json.loads((shared / "tfds" / "cc3m" / "default" / "1.0.0" / "build_report.json").read_text())
    train = report["splits"]["train"]
    planted = {r for r in PLANTED.values() if r}
    dropped = {r for r in planted if not r.startswith("converted")}
    assert train["dropped_by_reason"] == {r: 1 for r in dropped}, train
    assert train["converted_by_reason"] == {r: 1 for r in planted - dropped}, train
    assert train["seen"] == len(fixture_rows()) - 1 and train["kept"] == 29 + 3     # 1 dead URL
    captions = (shared / "cc3m_captions.txt").read_text(encoding="utf-8").splitlines()
    assert len(captions) == 32
    result = json.loads(next((shared / "runs" / "cc3m").glob("inference_all_step3.json")).read_text())
    assert set(result["results"]) == scored
    assert all(r["num_images"] == 2 for r in result["results"].values())
    assert (root / "workdirs" / "demo" / "eval_step3.json").is_file()
    e2e = [t for line, t in times.items()
           if any(c.line == line and ("SHARED" in c.text or "Train_GCC" in c.text)
                  and not c.text.startswith(("launch/", "gcloud", "sbatch", "python3.11", "pip"))
                  for c in commands)]
    print(f"CC3M path, tars to evaluate --dataset=all: {len(e2e)} commands, {sum(e2e):.1f}s")


def test_readme_parser_finds_prompts_and_continuations():
    text = "x\n\n    $ a --b\n    error: c ...\n\n```bash\n# note\nd \\\n    e\nf  # g\n```\n"
    got = [(c.line, c.text, c.expected) for c in readme_commands(text)]
    assert got == [(3, "a --b", ["error: c ..."]), (8, "d e", []), (10, "f  # g", [])]


def test_run_sh_keeps_the_callers_directory(tmp_path):
    """`./run.sh` must not cd: a relative path given to it means the caller's file."""
    (tmp_path / "rel.txt").write_text("mine\n")
    proc = subprocess.run([str(REPO / "run.sh"), "python", "-c",
                           "import os; print(os.getcwd()); print(open('rel.txt').read().strip())"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(tmp_path), "mine"]


def test_last_progress_line_printed_once(capsys):
    """evaluate and segment force a final progress line; it must not repeat the last one."""
    from mgca_jax.cli_utils import Progress
    progress = Progress("voc21", 4, every=0.0)
    progress.update(2)
    progress.update(2)
    progress.update(0, force=True)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" images")[0] for ln in lines] == ["[voc21] 2/4", "[voc21] 4/4"]

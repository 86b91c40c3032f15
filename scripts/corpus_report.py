"""Report how the real-world definitions in ``tests/fixtures/wild`` fare: ours and OpenCV's verdict.

For every file (or the files given; train/test files get their data layers' shapes from
``input_shapes.json`` there): ``loads`` (``caffe_bridge.load_net`` succeeds), ``parse
error`` (a PrototxtError, with its message), ``unsupported`` (an UnsupportedLayerError, with every
layer type of the file that has no shape rule yet), or ``error`` (any other exception); then
OpenCV's verdict: whether ``cv2.dnn.readNetFromCaffe`` parses the definition (run in a child
process, as OpenCV may crash). A summary with the counts closes the report.

    python scripts/corpus_report.py [--no-opencv] [FILE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WILD = REPO / "tests" / "fixtures" / "wild"
CV_TIMEOUT_S = 120
# Shapes for data layers that state none (train/test files), by file stem; other files: none.
INPUT_SHAPES = {k: v for k, v in json.loads((WILD / "input_shapes.json").read_text()).items()
                if not k.startswith("_")}

_CV_CHILD = """
import sys
import cv2
try:
    net = cv2.dnn.readNetFromCaffe(sys.argv[1])
except cv2.error as err:
    msg = str(err).strip()
    print("rejects: " + msg.split(" error: ", 1)[-1].splitlines()[0])
else:
    print("parses" if not net.empty() else "rejects: empty net")
"""


def _type_key(param: object) -> str:
    """The registry key of a layer: its type, or ``Python:module.Class`` for Python layers."""
    if param.type == "Python":  # type: ignore[attr-defined]
        py = param.python_param  # type: ignore[attr-defined]
        return f"Python:{py.module}.{py.layer}"
    return param.type  # type: ignore[attr-defined]


def _unsupported_types(path: Path) -> list[str]:
    """Every layer type of the deploy form of ``path`` without a shape rule, in file order."""
    import warnings

    from caffe_bridge import shapes
    from caffe_bridge.deploy import to_deploy
    from caffe_bridge.prototxt import parse_prototxt
    from caffe_bridge.upgrade import upgrade

    known = set(shapes.known_types())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = parse_prototxt(path)
        layers = to_deploy(upgrade(parsed), parsed.path, INPUT_SHAPES.get(path.stem)).layers
    types = [_type_key(raw.param) for raw in layers]
    return list(dict.fromkeys(t for t in types if t not in known))


def our_verdict(path: Path) -> tuple[str, str]:
    """(kind, detail): kind is ``loads``, ``parse error``, ``unsupported`` or ``error``."""
    import warnings

    from caffe_bridge import PrototxtError, UnsupportedLayerError, load_net

    warnings.simplefilter("ignore")  # the tolerant reader's notes: not a verdict
    try:
        load_net(path, input_shapes=INPUT_SHAPES.get(path.stem))
    except PrototxtError as err:
        return "parse error", str(err)
    except UnsupportedLayerError as err:
        try:
            types = _unsupported_types(path)
        except Exception:  # noqa: BLE001 - the report must go on; the message says enough
            types = []
        return "unsupported", ", ".join(types) if types else str(err)
    except Exception as err:  # noqa: BLE001 - report every other failure, with its class
        return "error", f"{type(err).__name__}: {err}"
    return "loads", ""


def opencv_verdict(path: Path) -> str:
    """``parses`` or ``rejects: <reason>`` from ``cv2.dnn.readNetFromCaffe`` in a child process."""
    try:
        run = subprocess.run([sys.executable, "-c", _CV_CHILD, str(path)], capture_output=True,
                             text=True, timeout=CV_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"rejects: no answer within {CV_TIMEOUT_S} s"
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        return f"rejects: child exited with status {run.returncode}"
    return lines[-1]


def _one_line(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="definitions (default: the wild corpus)")
    p.add_argument("--no-opencv", action="store_true", help="skip OpenCV's verdict")
    args = p.parse_args(argv)
    files = args.files or sorted(WILD.glob("*.prototxt"))
    ours: Counter[str] = Counter()
    cv: Counter[str] = Counter()
    both: Counter[tuple[str, str]] = Counter()
    for path in files:
        kind, detail = our_verdict(path)
        detail = detail.replace(str(path), "")  # the file is named at the start of the line
        ours[kind] += 1
        line = f"{path.name}: {kind}" + (f" ({_one_line(detail)})" if detail else "")
        if not args.no_opencv:
            verdict = opencv_verdict(path)
            cv_kind = "parses" if verdict == "parses" else "rejects"
            cv[cv_kind] += 1
            both[(kind, cv_kind)] += 1
            line += f" | OpenCV: {_one_line(verdict, 120)}"
        print(line, flush=True)
    print(f"\n{len(files)} files. Ours: " + ", ".join(f"{k} {n}" for k, n in ours.most_common()))
    if not args.no_opencv:
        print("OpenCV: " + ", ".join(f"{k} {n}" for k, n in cv.most_common()))
        print("Ours x OpenCV: " + ", ".join(f"{a}/{b} {n}" for (a, b), n in sorted(both.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

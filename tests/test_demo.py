"""``caffe2torch demo``: runs with no files, reports agreements below 1e-5, exits accordingly."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_bridge import demo
from caffe_bridge.demo import Agreement, DemoResult, demo_command, format_report

HAS_CV2 = importlib.util.find_spec("cv2") is not None
REL_ERR = re.compile(r"^  (\w+) vs (\w+)\s+rel err ([0-9.e+-]+)\s+top-5 identical (\d)/(\d)", re.M)


def _rows(output: str) -> list[tuple[str, str, float, int, int]]:
    return [(a, b, float(e), int(s), int(n)) for a, b, e, s, n in REL_ERR.findall(output)]


def test_demo_runs_and_agrees(tmp_path: Path) -> None:
    """The README's command: seeded SE-ResNet-50 written, read back two ways, checked."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo_command, ["--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    pairs = {(a, b) for a, b, *_ in rows}
    want = {("generic", "idiomatic")}
    if HAS_CV2:
        want |= {("generic", "OpenCV"), ("idiomatic", "OpenCV")}
    assert pairs == want
    for a, b, err, same, n in rows:
        assert 0 <= err < 1e-5, (a, b, err)
        assert same == n == demo.BATCH
    verdict = "OK: every agreement within 1e-05" if HAS_CV2 else "No independent reference"
    assert verdict in result.stdout
    for name in ("SE-ResNet-50.prototxt", "SE-ResNet-50.caffemodel"):
        assert (out / name).stat().st_size > 0
        assert name in result.stdout
    assert "recognised as SE-ResNet-50" in result.stdout
    assert "drawing seeded random weights" in result.stderr  # progress goes to stderr
    assert "drawing" not in result.stdout

    # --out never clobbers without --force, and fails before doing any work
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = CliRunner().invoke(demo_command, ["--out", str(out), "-q"])
    assert again.exit_code == 2
    assert "already exists" in again.stderr and again.stdout == ""
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_demo_without_opencv_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_opencv_missing", lambda: "the cv2 module is not installed")
    out = tmp_path / "d"
    out.mkdir()
    (out / "SE-ResNet-50.prototxt").write_text("old")
    result = CliRunner().invoke(demo_command, ["--seed", "2", "--out", str(out), "--force", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet
    assert "No independent reference was available" in result.stdout
    assert [(a, b) for a, b, *_ in _rows(result.stdout)] == [("generic", "idiomatic")]
    assert _rows(result.stdout)[0][2] < 1e-5
    assert (out / "SE-ResNet-50.prototxt").read_text() != "old"  # --force replaced it


def _result(errors: list[float], reference: str | None = "OpenCV") -> DemoResult:
    pairs = [("generic", "OpenCV"), ("idiomatic", "OpenCV"), ("generic", "idiomatic")]
    return DemoResult(
        seed=0, prototxt=Path("/x/SE-ResNet-50.prototxt"),
        caffemodel=Path("/x/SE-ResNet-50.caffemodel"),
        sizes={"SE-ResNet-50.prototxt": 49_300, "SE-ResNet-50.caffemodel": 112_600_000},
        caffe_layers=308, fx_modules=255, parameters=28_088_024, recognised="SE-ResNet-50",
        bn_factor=0.999, reference=reference,
        no_reference_reason=None if reference else "no cv2",
        agreements=[Agreement(a, b, e, 2, 2) for (a, b), e in zip(pairs, errors, strict=False)],
        timings=[("build", 0.2), ("weights", 0.6)],
    )


@pytest.mark.parametrize(
    ("errors", "exit_code", "verdict"),
    [
        pytest.param([5e-7, 5e-7, 3e-7], 0, "OK: every agreement", id="all-within"),
        pytest.param([5e-7, 2e-5, 3e-7], 1, "FAILED", id="one-exceeds"),
        pytest.param([1e-5, 1e-5, 1e-5], 0, "OK", id="at-tolerance"),
    ],
)
def test_exit_code_follows_agreements(
    errors: list[float], exit_code: int, verdict: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: _result(errors))
    result = CliRunner().invoke(demo_command, ["-q"])
    assert result.exit_code == exit_code
    assert verdict in result.stdout
    assert [row[2] for row in _rows(result.stdout)] == pytest.approx(errors, rel=1e-2)


def test_report_names_every_step_and_file() -> None:
    text = format_report(_result([5e-7, 5e-7, 3e-7]), kept=True)
    assert "/x:" in text and "112.6 MB" in text and "49.3 kB" in text
    assert "moving-average factor 0.999" in text and "28.09M" in text
    assert "build 0.20  weights 0.60" in text
    text = format_report(_result([3e-7], reference=None), kept=False)
    assert "reference  NONE: no cv2." in text and "temporary folder" in text


def test_errors_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    result = CliRunner().invoke(demo_command, ["--out", str(target)])
    assert result.exit_code == 2  # click rejects a file given as DIR

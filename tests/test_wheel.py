"""The built wheel installs everything under caffe_bridge and imports on its own."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_built_wheel_imports_under_caffe_bridge_only(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(dist)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = dist.glob("caffe_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"caffe_bridge"}
    assert "caffe_bridge/proto/caffe.desc" in names
    assert "caffe_bridge/converters/registry.py" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, cwd=tmp_path)
    probe = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import importlib.util, caffe_bridge, caffe_bridge.converters as c\n"
        "from caffe_bridge import schema\n"
        f"assert caffe_bridge.__file__.startswith({str(site)!r}), caffe_bridge.__file__\n"
        "assert importlib.util.find_spec('proto') is None\n"
        "assert importlib.util.find_spec('converters') is None\n"
        "assert 'Axpy' in c.supported_types()\n"
        "print(schema.NetParameter.DESCRIPTOR.fields_by_name['layer'].number)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", probe], check=True, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "100"

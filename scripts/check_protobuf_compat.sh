#!/usr/bin/env bash
# Check caffe_bridge.schema against several protobuf releases, each in a throwaway venv.
#
#   scripts/check_protobuf_compat.sh [PIP_REQUIREMENT ...]
#
# Default requirements: the oldest release we support (4.21.12), the newest 5.x, the newest
# 6.x and the newest release of all. Each venv gets only protobuf and numpy; the check loads
# caffe_bridge.schema straight from this checkout without running caffe_bridge/__init__.py
# (so torch is not needed) and parses text and binary Caffe snippets. Exit status is the
# number of failing requirements.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ "$#" -gt 0 ]; then
    REQUIREMENTS=("$@")
else
    REQUIREMENTS=("protobuf==4.21.12" "protobuf>=5,<6" "protobuf>=6,<7" "protobuf")
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/check.py" <<'PY'
"""Load caffe_bridge.schema from the checkout given as argv[1] and exercise it."""
import struct
import sys
import types

repo = sys.argv[1]
# A bare package object stands in for caffe_bridge/__init__.py (which may import torch).
package = types.ModuleType("caffe_bridge")
package.__path__ = [f"{repo}/caffe_bridge"]
sys.modules["caffe_bridge"] = package

import google.protobuf  # noqa: E402
from google.protobuf import message_factory, text_format  # noqa: E402

from caffe_bridge import schema  # noqa: E402

api = "GetMessageClass" if hasattr(message_factory, "GetMessageClass") else "GetPrototype"
text = """
name: "compat"
input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride_h: 1 stride_w: 1 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 ceil_mode: false } }
layer { name: "pool2" type: "Pooling" bottom: "pool" top: "pool2"
        pooling_param { kernel_size: 2 round_mode: FLOOR } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool2" top: "fc"
         inner_product_param { num_output: 10 } }
"""
net = text_format.Parse(text, schema.NetParameter())
assert net.layer[0].convolution_param.HasField("stride_h")
assert not net.layer[1].pooling_param.HasField("stride_h")
assert net.layer[1].pooling_param.HasField("ceil_mode")
assert net.layer[1].pooling_param.ceil_mode is False
assert net.layer[2].pooling_param.round_mode == schema.PoolingParameter.FLOOR
assert net.layers[0].type == schema.V1LayerParameter.INNER_PRODUCT == 14
assert schema.NetParameter.FromString(net.SerializeToString()) == net
assert schema.NetParameter.DESCRIPTOR.full_name == "caffe_bridge.caffe.NetParameter"
assert schema.Phase.Value("TEST") == 1

# BlobProto.data (field 5): packed and unpacked encodings give the same values.
values = [1.5, -2.0, 4.25]
raw = b"".join(struct.pack("<f", v) for v in values)
packed = schema.BlobProto.FromString(bytes([0x2A, len(raw)]) + raw)
unpacked = schema.BlobProto.FromString(b"".join(b"\x2d" + struct.pack("<f", v) for v in values))
assert list(packed.data) == list(unpacked.data) == values

print(f"protobuf {google.protobuf.__version__}: OK ({len(schema.message_names())} messages, "
      f"{api})")
PY

failures=0
summary=()
for req in "${REQUIREMENTS[@]}"; do
    venv="$WORK/venv"
    rm -rf "$venv"
    echo "=== $req"
    if ! "$PYTHON" -m venv "$venv" \
        || ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$req" numpy
    then
        echo "install failed: $req"
        summary+=("$req: INSTALL FAILED")
        failures=$((failures + 1))
        continue
    fi
    version="$("$venv/bin/python" -c 'import google.protobuf as p; print(p.__version__)')"
    if "$venv/bin/python" "$WORK/check.py" "$REPO"; then
        summary+=("$req -> $version: PASS")
    else
        summary+=("$req -> $version: FAIL")
        failures=$((failures + 1))
    fi
done

echo
echo "Summary:"
printf '  %s\n' "${summary[@]}"
exit "$failures"

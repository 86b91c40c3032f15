"""caffe-bridge: run released Caffe models in PyTorch, exactly."""

from setuptools import setup

setup(
    name="caffe-bridge",
    version="0.1.0",
    description="Read Caffe prototxt/caffemodel without Caffe; convert to exact PyTorch, ONNX.",
    long_description=open("README.md", encoding="utf-8").read(),  # noqa: SIM115
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Everything installs under caffe_bridge: the card's top-level folders `proto/` and
    # `converters/` become caffe_bridge.proto and caffe_bridge.converters.
    packages=[
        "caffe_bridge",
        "caffe_bridge.models",
        "caffe_bridge.codegen",
        "caffe_bridge.resources",
        "caffe_bridge.proto",
        "caffe_bridge.converters",
    ],
    package_dir={
        "caffe_bridge": "caffe_bridge",
        "caffe_bridge.proto": "proto",
        "caffe_bridge.converters": "converters",
    },
    package_data={
        "caffe_bridge.proto": ["caffe.proto", "caffe.desc"],
        "caffe_bridge.codegen": ["*.tmpl"],
        "caffe_bridge.resources": ["*.txt", "*.tsv", "*.md", "*.json"],
    },
    install_requires=[
        "torch>=2.4",
        "protobuf>=4.21",
        "numpy>=1.24",
        "click>=8.1",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6.80",
            "opencv-python-headless>=4.8,<5",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "grpcio-tools>=1.60",
            "build>=1.0",
            "ruff>=0.5",
            "safetensors>=0.4",  # the --format safetensors tests
        ],
        "plot": ["matplotlib>=3.7"],
        "safetensors": ["safetensors>=0.4"],
    },
    entry_points={"console_scripts": ["caffe2torch=caffe_bridge.cli:main"]},
)

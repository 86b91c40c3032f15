"""The one error family of caffe-bridge: every message leads with ``file:line`` and the layer."""

from __future__ import annotations


class CaffeBridgeError(Exception):
    """Base of every error raised on bad input.

    ``str(err)`` reads ``file:line: layer 'name' (Type): message`` with the parts that are known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        layer: str | None = None,
        layer_type: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.layer = layer
        self.layer_type = layer_type
        super().__init__(self._render())

    def _render(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}" if self.line is not None else self.file)
        if self.layer is not None:
            kind = f" ({self.layer_type})" if self.layer_type else ""
            parts.append(f"layer {self.layer!r}{kind}")
        elif self.layer_type is not None:
            parts.append(f"layer type {self.layer_type!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def __reduce__(self):  # keep pickling (multiprocessing workers) working with keyword args
        return (_rebuild, (type(self), self.message, self.file, self.line, self.layer,
                           self.layer_type))


def _rebuild(cls, message, file, line, layer, layer_type):  # noqa: ANN001, ANN202
    return cls(message, file=file, line=line, layer=layer, layer_type=layer_type)


class PrototxtError(CaffeBridgeError):
    """A net definition that does not parse or does not make sense."""


class CaffemodelError(CaffeBridgeError):
    """A weights file that is corrupt, truncated or inconsistent with its definition."""


class UnsupportedLayerError(CaffeBridgeError):
    """A layer type (or a setting of it) that no registered converter handles."""


class ShapeError(CaffeBridgeError):
    """A shape that cannot be inferred or does not match what Caffe expects."""


class CaffeBridgeWarning(UserWarning):
    """Something a user must hear about that does not stop the work (e.g. unused weights)."""

"""Atomic output files: write to a temporary sibling, check, then ``os.replace`` into place.

A target is never overwritten unless asked (``force``), and a failure or ``KeyboardInterrupt``
at any point leaves neither a partial target nor a temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from caffe_bridge.errors import CaffeBridgeError


def check_target(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Validate one output path before any work: parent folder exists, no clobbering."""
    target = Path(path)
    if target.is_dir():
        raise CaffeBridgeError("is a directory, not an output file", file=str(target))
    if target.exists() and not force:
        raise CaffeBridgeError("already exists (pass --force to overwrite)", file=str(target))
    parent = target.parent
    if not parent.is_dir():
        raise CaffeBridgeError(f"output folder {str(parent)!r} does not exist", file=str(target))
    return target


def temp_sibling(target: Path) -> Path:
    """An unused hidden file name beside ``target`` keeping its suffix (``.x.1a2b3c.tmp.py``)."""
    while True:
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        if not tmp.exists():
            return tmp


@contextlib.contextmanager
def atomic_outputs(
    targets: Sequence[str | os.PathLike[str]], *, force: bool = False
) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success move all into place, else remove them.

    The body writes (and checks) the temporary files; nothing reaches a target unless the whole
    body succeeds. Targets are validated first, so a clobbering mistake fails before any work.
    """
    final = [check_target(t, force=force) for t in targets]
    if len({p.resolve() for p in final}) != len(final):
        raise CaffeBridgeError("the same output file is named twice")
    temps = [temp_sibling(p) for p in final]
    try:
        yield temps
        for tmp in temps:
            if not tmp.is_file():
                raise CaffeBridgeError("was not written", file=str(tmp))
        with _interrupts_deferred():  # all targets or none, even on Ctrl-C
            for tmp, target in zip(temps, final, strict=True):
                os.replace(tmp, target)
    finally:
        with _interrupts_deferred():  # a second Ctrl-C must not leave a temporary file
            for tmp in temps:
                with contextlib.suppress(OSError):
                    tmp.unlink()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT (delivered, as KeyboardInterrupt, when the block ends) on the main thread."""
    block = getattr(signal, "pthread_sigmask", None)
    if block is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = block(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        block(signal.SIG_SETMASK, old)


def write_stream(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, force: bool = False
) -> None:
    """Atomically write a binary file: ``write(f)`` fills it, then it is synced and moved in."""
    with atomic_outputs([path], force=force) as (tmp,), open(tmp, "xb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str, *, force: bool = False) -> None:
    """Atomically write a UTF-8 text file."""
    with atomic_outputs([path], force=force) as (tmp,):
        tmp.write_text(text, encoding="utf-8")

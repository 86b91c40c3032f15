"""What every ``caffe2torch`` command shares: exit codes, the one error path, input checks,
where weights come from, and progress bars. Commands live in :mod:`caffe_bridge.cli` (and,
loaded on first use, :mod:`caffe_bridge.demo` and :mod:`caffe_bridge.evaluate_cli`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from caffe_bridge.errors import CaffeBridgeError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_MISMATCH = 1  # verify/demo: a blob or an agreement beyond tolerance
EXIT_ERROR = 2  # any error, printed as one line ``error: <message>`` (click's usage errors too)
EXIT_INTERRUPTED = 130

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _fail(message: str) -> NoReturn:
    rank = int(os.environ.get("RANK", "0") or 0)  # torchrun: say which process failed
    prefix = f"[rank {rank}] " if rank else ""
    click.echo(f"error: {prefix}{one_line(message)}", err=True)
    sys.exit(EXIT_ERROR)


def _os_message(err: OSError) -> str:
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}" if err.filename is not None else reason


def _silent_here(err: CaffeBridgeError) -> bool:
    """Under torchrun, only rank 0 and the process whose own shard failed print the error."""
    rank = int(os.environ.get("RANK", "0") or 0)
    return rank != 0 and not getattr(err, "in_shard", False)


def handle_errors(fn: F) -> F:
    """The one error path of every command: the package's errors, file problems and Ctrl-C
    become one line on stderr and exit code 2 (130 for Ctrl-C)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CaffeBridgeError as err:
            if _silent_here(err):
                sys.exit(EXIT_ERROR)
            _fail(str(err))
        except OSError as err:
            _fail(_os_message(err))
        except MemoryError:
            _fail("out of memory")
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def input_file(path: str, what: str) -> str:
    """Check that ``path`` is a readable file (clean errors instead of click's usage text)."""
    p = Path(path)
    if not p.exists():
        raise CaffeBridgeError(f"no such {what}", file=path)
    if p.is_dir():
        raise CaffeBridgeError(f"is a directory, not a {what}", file=path)
    with open(p, "rb"):
        pass  # PermissionError surfaces here as a clean OSError
    return path


def find_weights(prototxt: str, weights: str | None, no_weights: bool = False,
                 *, flag: str = "--no-weights") -> str | None:
    """The caffemodel every command uses: WEIGHTS, else NET.caffemodel beside the prototxt.

    ``no_weights`` is the command's explicit flag (named ``flag`` in messages) for going
    without; anything else without a caffemodel is an error naming where it looked.
    """
    if weights is not None and no_weights:
        raise click.UsageError(f"pass either WEIGHTS or {flag}, not both")
    if no_weights:
        return None
    if weights is not None:
        return input_file(weights, "caffemodel")
    beside = Path(prototxt).with_suffix(".caffemodel")
    if beside.is_file():
        return str(beside)
    raise CaffeBridgeError(f"no weights: pass WEIGHTS or {flag} (looked for {beside})")


class Progress:
    """``progress(stage, done, total)`` callbacks drawn as tqdm bars on stderr."""

    LABELS = {"hash": ("sha256", "B"), "render": ("render", " layers"),
              "export": ("export", " files"), "verify": ("verify", " steps")}

    def __init__(self, quiet: bool) -> None:
        self.disabled = quiet or not sys.stderr.isatty()
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.disabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            label, unit = self.LABELS.get(stage, (stage, ""))
            bar = tqdm(total=total, desc=label, unit=unit, unit_scale=unit == "B",
                       file=sys.stderr, leave=False)
            self.bars[stage] = bar
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[stage]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def quiet_option(fn: F) -> F:
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress bars (they are also off when stderr is not a "
                             "terminal).")(fn)


def _parse_input_shapes(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) <= 0:
            raise click.BadParameter(f"{value!r}: expected NAME=N,C,H,W with positive sizes",
                                     ctx=ctx, param=param)
        shapes[name] = shape
    return shapes


_INPUT_SHAPE_HELP = ("Shape of an input (or of a data layer's top) the definition does not "
                     "state, e.g. data=1,3,513,513; overrides a stated one. Repeatable.")


def input_shape_option(fn: F) -> F:
    """Add --input-shape to a command that loads a net: every load_net inside uses it."""

    @click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=N,C,H,W",
                  callback=_parse_input_shapes, help=_INPUT_SHAPE_HELP)
    @functools.wraps(fn)
    def wrapper(*args: Any, input_shape: dict[str, tuple[int, ...]], **kwargs: Any) -> Any:
        from caffe_bridge.deploy import default_input_shapes

        with default_input_shapes(input_shape):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def add_input_shape_option(cmd: click.Command) -> click.Command:
    """The same for a command defined elsewhere (``eval``), once."""
    if cmd.callback is not None and not any(p.name == "input_shape" for p in cmd.params):
        wrapped = input_shape_option(cmd.callback)
        cmd.params.extend(wrapped.__click_params__[-1:])  # type: ignore[attr-defined]
        cmd.callback = wrapped
    return cmd

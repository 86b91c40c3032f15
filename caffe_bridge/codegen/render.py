"""Render a converted net as one standalone, readable PyTorch source file.

Design (see ``caffe_bridge.codegen`` for the overview):

* **Constructor capture.** ``build_module`` runs with ``nn.Module.__init__`` wrapped
  (:func:`recording`): when a module is constructed, the outermost ``__init__`` frame of that
  object is read and its arguments are recorded. Any converter, built-in or plugin, is thus
  rendered as the very constructor call it made (``nn.Conv2d(3, 64, (7, 7), stride=...)``,
  ``Affine(torch.zeros(64, 1, 1), ...)``) without per-type templates or cooperation.
* **Values.** Constructor arguments become Python literals; tensors become ``torch.zeros``
  placeholders (tiny ones exact literals) whose values the state dict restores; modules
  passed as arguments recurse.
* **Classes.** torch classes are referenced (``nn.Conv2d``); every other module class, and the
  functions/constants its source uses, is copied with ``inspect.getsource``. Copied code may
  only import torch and the standard library; anything else is a :class:`CodegenError`.
* **Forward.** Written from the fx graph: one statement per layer, variables named after the
  Caffe blobs (in-place layers rebind them, as in Caffe), ``del`` once a value is dead.
* **Safety.** Caffe names reach the source only through ``repr()`` in string-literal positions,
  identifiers only through :func:`caffe_bridge.build.safe_identifier`, and the docstring shows
  whitelisted characters only. The result is compiled and its identifiers re-checked.
* **Checks.** Each layer's module is rebuilt in-process from its rendered expression (on the
  meta device, then given the original's tensors: no weight initialisation), loaded with the
  original state dict and run on small seeded inputs (its own shapes when it rejects them): it
  must match bit for bit. The written file is then checked on the whole net at full size.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import inspect
import math
import re
import string
import sys
import textwrap
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
from torch import fx, nn

from caffe_bridge.build import CAFFE_FOLDED, CAFFE_TOPS, caffe_layer_names, safe_identifier
from caffe_bridge.errors import CaffeBridgeError
from caffe_bridge.ir import Net
from caffe_bridge.micro_batch import MICRO_BATCH, run_in_parts, splittable

Progress = Callable[[str, int, int], None]
SMALL_TENSOR = 4  # tensors with at most this many elements are written out exactly
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class CodegenError(CaffeBridgeError):
    """A converted module that cannot be written as standalone source."""


# ------------------------------------------------------------------ constructor capture


@dataclass(frozen=True)
class InitCall:
    """How one module was constructed: its class and the arguments of its ``__init__``."""

    cls: type
    args: tuple[object, ...]
    kwargs: dict[str, object]


Records = dict[int, tuple[nn.Module, InitCall | None]]


def _same_default(value: object, default: object) -> bool:
    if value is default:
        return True
    simple = (bool, int, float, str, tuple, type(None))
    if type(value) is not type(default) or not isinstance(value, simple):
        return False
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - odd __eq__: keep the argument
        return False


def _capture(obj: nn.Module, frame: types.FrameType | None) -> InitCall | None:
    """The arguments of the outermost ``__init__`` running for ``obj`` (None if unknown)."""
    outer = None
    while frame is not None and frame.f_code.co_name == "__init__":
        names = frame.f_code.co_varnames
        if not names or frame.f_locals.get(names[0]) is not obj:
            break
        outer, frame = frame, frame.f_back
    init = type(obj).__init__
    if outer is None or getattr(init, "__code__", None) is not outer.f_code:
        return None
    local = outer.f_locals
    args: list[object] = []
    kwargs: dict[str, object] = {}
    prefix: list[tuple[str, object]] = []  # positional-capable parameters so far
    for p in list(inspect.signature(init).parameters.values())[1:]:
        value = local.get(p.name, p.default)
        if p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD
                                           and p.default is p.empty and not kwargs):
            args.append(value)
            prefix.append((p.name, value))
        elif p.kind is p.POSITIONAL_OR_KEYWORD:
            prefix.append((p.name, value))
            if not _same_default(value, p.default):
                kwargs[p.name] = value
        elif p.kind is p.VAR_POSITIONAL:
            if value:
                args = [v for _, v in prefix] + list(value)
                for name, _ in prefix:
                    kwargs.pop(name, None)
        elif p.kind is p.KEYWORD_ONLY:
            if not _same_default(value, p.default):
                kwargs[p.name] = value
        else:  # VAR_KEYWORD
            kwargs.update(value)
    return InitCall(type(obj), tuple(args), kwargs)


@contextlib.contextmanager
def recording() -> Iterator[Records]:
    """Record the constructor call of every ``nn.Module`` built inside the block."""
    records: Records = {}
    original = nn.Module.__init__

    def __init__(self: nn.Module, *args: object, **kwargs: object) -> None:  # noqa: N807
        original(self, *args, **kwargs)
        if id(self) not in records:
            if type(self).__init__ is __init__:  # no class of its own defines __init__
                records[id(self)] = (self, InitCall(type(self), (), {}))
            else:
                records[id(self)] = (self, _capture(self, sys._getframe(1)))

    nn.Module.__init__ = __init__  # type: ignore[method-assign]
    try:
        yield records
    finally:
        nn.Module.__init__ = original  # type: ignore[method-assign]


# ------------------------------------------------------------------ helper code and imports


def _allowed_module(name: str) -> bool:
    top = name.split(".")[0]
    return top == "torch" or top in sys.stdlib_module_names


def _is_constant(value: object) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    return isinstance(value, (tuple, frozenset)) and all(_is_constant(v) for v in value)


class _Names(ast.NodeVisitor):
    """Names a piece of source reads (apart from annotations), annotations read, and binds."""

    def __init__(self) -> None:
        self.loads: set[str] = set()
        self.annotations: set[str] = set()
        self.stores: set[str] = set()
        self.imports: list[ast.Import | ast.ImportFrom] = []
        self._annotation = 0

    def visit_Name(self, node: ast.Name) -> None:  # noqa: N802
        if not isinstance(node.ctx, ast.Load):
            self.stores.add(node.id)
        elif self._annotation:
            self.annotations.add(node.id)
        else:
            self.loads.add(node.id)

    def _annotated(self, node: ast.AST | None) -> None:
        if node is not None:
            self._annotation += 1
            self.visit(node)
            self._annotation -= 1

    def visit_arguments(self, node: ast.arguments) -> None:  # noqa: N802
        for a in (*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg):
            if a is not None:
                self.stores.add(a.arg)
                self._annotated(a.annotation)
        for d in (*node.defaults, *node.kw_defaults):
            if d is not None:
                self.visit(d)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stores.add(node.name)
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        self._annotated(node.returns)
        for stmt in node.body:
            self.visit(stmt)

    visit_FunctionDef = _function  # noqa: N815
    visit_AsyncFunctionDef = _function  # noqa: N815

    def visit_ClassDef(self, node: ast.ClassDef) -> None:  # noqa: N802
        self.stores.add(node.name)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:  # noqa: N802
        self.visit(node.target)
        self._annotated(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        self.imports.append(node)
        self.stores.update(a.asname or a.name.split(".")[0] for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        self.imports.append(node)
        self.stores.update(a.asname or a.name for a in node.names)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:  # noqa: N802
        if node.name:
            self.stores.add(node.name)
        self.generic_visit(node)


def _import_statement(module: types.ModuleType, name: str) -> tuple[str, str] | None:
    """(statement, imported module) of the top-level import binding ``name`` in ``module``."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if (a.asname or a.name.split(".")[0]) == name:
                    text = f"import {a.name} as {a.asname}" if a.asname else f"import {a.name}"
                    return text, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                if (a.asname or a.name) == name:
                    alias = f" as {a.asname}" if a.asname and a.asname != a.name else ""
                    return f"from {node.module} import {a.name}{alias}", node.module
    return None


def _module_import(module: types.ModuleType, name: str) -> str:
    full = module.__name__
    parent, _, leaf = full.rpartition(".")
    if not parent:
        return f"import {full}" if full == name else f"import {full} as {name}"
    return f"from {parent} import {leaf}" if leaf == name else f"import {full} as {name}"


@dataclass
class _Emitter:
    """Collects the imports and copied helper code a generated file needs, without clashes."""

    reserved: set[str]
    bound: dict[str, object] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)  # statement -> first name bound
    blocks: list[str] = field(default_factory=list)
    _visiting: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._bind("torch", torch, "import torch")
        self._bind("nn", nn, "from torch import nn")

    def namespace(self) -> dict[str, object]:
        return {"__builtins__": builtins, **self.bound}

    def _bind(self, name: str, obj: object, statement: str | None = None) -> bool:
        """Bind ``name``; False when already bound to ``obj`` (nothing to emit)."""
        if name in self.bound:
            old = self.bound[name]
            if old is obj or (_is_constant(old) and type(old) is type(obj) and old == obj):
                return False
            raise CodegenError(f"two different objects named {name!r} are needed by the "
                               f"generated code ({_describe(old)} and {_describe(obj)}); "
                               f"rename one of them")
        if name in self.reserved:
            raise CodegenError(f"{_describe(obj)} is named {name!r}, a name the generated file "
                               f"reserves; rename it")
        self.bound[name] = obj
        if statement is not None:
            self.imports.setdefault(statement, name)
        return True

    def class_ref(self, cls: type) -> str:
        """An expression naming ``cls`` in the generated file (copying its source if needed)."""
        mod = cls.__module__ or ""
        if _allowed_module(mod):
            if mod.split(".")[0] == "torch":
                for prefix, ns in (("nn", nn), ("torch", torch)):
                    if getattr(ns, cls.__name__, None) is cls:
                        return f"{prefix}.{cls.__name__}"
            if "." in cls.__qualname__ or getattr(sys.modules.get(mod), cls.__name__,
                                                  None) is not cls:
                raise CodegenError(f"{_describe(cls)} cannot be imported by name")
            self._bind(cls.__name__, cls, f"from {mod} import {cls.__name__}")
            return cls.__name__
        self.copy(cls)
        return cls.__name__

    def copy(self, obj: type | types.FunctionType) -> None:
        """Copy the source of a class or function (and of what it uses) into the file."""
        if self.bound.get(obj.__name__) is obj or id(obj) in self._visiting:
            return
        if obj.__qualname__ != obj.__name__:
            raise CodegenError(f"{_describe(obj)} is not defined at module level, so its "
                               f"source cannot be copied into the generated file")
        module = sys.modules.get(obj.__module__)
        try:
            source = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError) as err:
            raise CodegenError(f"the source of {_describe(obj)} is not available: {err}") \
                from None
        names = _Names()
        names.visit(ast.parse(source))
        for node in names.imports:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""]
            for m in mods:
                if getattr(node, "level", 0) or not _allowed_module(m):
                    raise CodegenError(f"{_describe(obj)} imports {m!r}; generated code may "
                                       f"import only torch and the standard library")
        self._visiting.add(id(obj))
        try:
            for name in sorted(names.loads - names.stores):
                self._resolve(name, module, obj, strict=True)
            for name in sorted(names.annotations - names.stores - names.loads):
                self._resolve(name, module, obj, strict=False)
        finally:
            self._visiting.discard(id(obj))
        if self._bind(obj.__name__, obj):
            self.blocks.append(source)

    def _resolve(self, name: str, module: types.ModuleType | None, user: object,
                 strict: bool) -> None:
        """Make global ``name`` (as ``user``'s module defines it) available in the file."""
        glb = vars(module) if module is not None else {}
        if name not in glb:
            if hasattr(builtins, name) or not strict:
                return
            raise CodegenError(f"{_describe(user)} uses {name!r}, which its module does not "
                               f"define")
        value = glb[name]
        if self.bound.get(name) is value:
            return
        try:
            self._resolve_value(name, value, module, user)
        except CodegenError:
            if strict:
                raise

    def _resolve_value(self, name: str, value: object, module: types.ModuleType | None,
                       user: object) -> None:
        found = _import_statement(module, name) if module is not None else None
        if isinstance(value, types.ModuleType):
            if not _allowed_module(value.__name__):
                raise CodegenError(f"{_describe(user)} uses module {value.__name__!r}; "
                                   f"generated code may import only torch and the standard "
                                   f"library")
            statement = found[0] if found and _allowed_module(found[1]) else \
                _module_import(value, name)
            self._bind(name, value, statement)
            return
        if found is not None and _allowed_module(found[1]):
            self._bind(name, value, found[0])
            return
        if isinstance(value, (type, types.FunctionType)):
            origin = value.__module__ or ""
            if _allowed_module(origin):
                if getattr(sys.modules.get(origin), value.__qualname__, None) is not value:
                    raise CodegenError(f"{_describe(user)} uses {_describe(value)}, which "
                                       f"cannot be imported by name")
                alias = "" if value.__qualname__ == name else f" as {name}"
                self._bind(name, value, f"from {origin} import {value.__qualname__}{alias}")
                return
            if origin.split(".")[0] not in ("caffe_bridge", getattr(module, "__name__", "")
                                            .split(".")[0]):
                raise CodegenError(f"{_describe(user)} uses {_describe(value)}; generated "
                                   f"code may import only torch and the standard library")
            if value.__name__ != name:
                raise CodegenError(f"{_describe(user)} uses {_describe(value)} under another "
                                   f"name ({name!r}); use its own name")
            self.copy(value)
            return
        if _is_constant(value):
            if self._bind(name, value):
                self.blocks.append(f"{name} = {_literal(value)}")
            return
        raise CodegenError(f"{_describe(user)} uses the global {name!r} "
                           f"({type(value).__name__}), which cannot be written as source")


def _describe(obj: object) -> str:
    if isinstance(obj, (type, types.FunctionType)):
        kind = "class" if isinstance(obj, type) else "function"
        return f"{kind} {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    return f"{type(obj).__name__} value"


# ------------------------------------------------------------------ values


def _literal(value: object) -> str:
    """Source for a plain constant (floats exact, including inf and nan)."""
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else '-float("inf")'
        return repr(value)
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, frozenset):
        return "frozenset({" + ", ".join(_literal(v) for v in value) + "})"
    raise CodegenError(f"cannot write a {type(value).__name__} value as source")


class _Renderer:
    """Renders constructor arguments, recursing into module arguments."""

    def __init__(self, emitter: _Emitter, records: Records) -> None:
        self.emitter = emitter
        self.records = records

    def module(self, module: nn.Module) -> str:
        entry = self.records.get(id(module))
        call = entry[1] if entry is not None and entry[0] is module else None
        if call is None:
            raise CodegenError(f"cannot tell how the {type(module).__name__} module was "
                               f"constructed (built outside the converter, copied, or with a "
                               f"wrapped __init__)")
        ref = self.emitter.class_ref(call.cls)
        parts = [self.value(v) for v in call.args]
        parts += [f"{k}={self.value(v)}" for k, v in call.kwargs.items()]
        return f"{ref}({', '.join(parts)})"

    def value(self, v: object) -> str:
        if isinstance(v, nn.Module):
            return self.module(v)
        if isinstance(v, torch.Tensor):
            return self.tensor(v)
        if isinstance(v, np.generic):
            return _literal(v.item())
        if isinstance(v, torch.Size):
            return f"torch.Size({_literal(list(v))})"
        if isinstance(v, torch.dtype):
            return str(v)
        if isinstance(v, torch.device):
            return f"torch.device({str(v)!r})"
        if isinstance(v, tuple):
            inner = ", ".join(self.value(x) for x in v)
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        if isinstance(v, list):
            return "[" + ", ".join(self.value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{self.value(k)}: {self.value(x)}"
                                   for k, x in v.items()) + "}"
        if v is Ellipsis:
            return "..."
        if isinstance(v, slice):
            return f"slice({self.value(v.start)}, {self.value(v.stop)}, {self.value(v.step)})"
        if isinstance(v, np.ndarray):
            raise CodegenError("a numpy array is passed to a module constructor; generated "
                               "code may use only torch (pass a tensor instead)")
        return _literal(v)

    def tensor(self, t: torch.Tensor) -> str:
        param = isinstance(t, nn.Parameter)
        grad = "" if t.requires_grad else ", requires_grad=False"
        t = t.detach()
        dtype = str(t.dtype)
        if t.numel() <= SMALL_TENSOR and t.device.type == "cpu":
            body = f"torch.tensor({_literal(t.tolist())}, dtype={dtype})"
        else:
            shape = ", ".join(str(d) for d in t.shape)
            body = f"torch.zeros(({shape}{',' if t.dim() == 1 else ''}), dtype={dtype})"
        if param:
            return f"nn.Parameter({body}{grad})"
        return body


# ------------------------------------------------------------------ forward


@dataclass
class _Statement:
    attr: str
    args: list[str]  # value names
    targets: list[str]  # value names


def _graph_statements(gm: fx.GraphModule, net: Net) -> tuple[list[str], list[_Statement],
                                                              list[str]]:
    """(input values, one statement per submodule call, output values) of ``gm``'s graph.

    Each call's tops come from its node (``build_module`` records them): layer names may repeat.
    """
    input_values = [v for layer in net.layers if layer.type == "Input" for v in layer.tops]
    value_of: dict[fx.Node, str] = {}
    multi: dict[fx.Node, list[str]] = {}
    inputs: list[str] = []
    stmts: list[_Statement] = []
    outputs: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            value_of[node] = input_values[len(inputs)]
            inputs.append(value_of[node])
        elif node.op == "call_module":
            tops = list(node.meta[CAFFE_TOPS])
            args = [value_of[a] for a in node.args]
            stmts.append(_Statement(node.target, args, tops))
            if len(tops) == 1:
                value_of[node] = tops[0]
            else:
                multi[node] = tops
        elif node.op == "call_function" and node.args and node.args[0] in multi:
            value_of[node] = multi[node.args[0]][node.args[1]]
        elif node.op == "output":
            result = node.args[0]
            outputs = [value_of[n] for n in (result if isinstance(result, tuple) else (result,))]
        else:
            raise CodegenError(f"unexpected graph node {node.op} {node.target!r}")
    return inputs, stmts, outputs


def _forward_source(net: Net, inputs: list[str], stmts: list[_Statement], outputs: list[str],
                    reserved: set[str], single: bool) -> tuple[str, str]:
    """(argument list, body) of ``forward``: variables named after the Caffe blobs."""
    end = len(stmts)
    last_use: dict[str, int] = {v: -1 for v in inputs}
    for i, s in enumerate(stmts):
        for v in s.targets:
            last_use[v] = i
        for v in s.args:
            last_use[v] = i
    for v in outputs:
        last_use[v] = end
    taken = set(reserved) | {"self"}
    preferred: dict[str, str] = {}
    holder: dict[str, str] = {}  # variable -> value it holds
    var: dict[str, str] = {}  # value -> variable

    def bind(value: str, i: int, fresh: set[str]) -> str:
        caffe = net.blobs[value].caffe_name
        if caffe not in preferred:
            preferred[caffe] = safe_identifier(caffe, taken)
        name = preferred[caffe]
        held = holder.get(name)
        if name in fresh or (held is not None and last_use[held] > i):
            name = safe_identifier(caffe, taken)
        holder[name] = value
        var[value] = name
        fresh.add(name)
        return name

    args = ["self"] + [f"{bind(v, -1, set())}: torch.Tensor" for v in inputs]
    lines: list[str] = []
    for i, s in enumerate(stmts):
        call = f"self.{s.attr}({', '.join(var[a] for a in s.args)})"
        fresh: set[str] = set()
        targets = [bind(v, i, fresh) for v in s.targets]
        lines.append(f"{', '.join(targets)} = {call}")
    result = [var[v] for v in outputs]
    lines.append(f"return {result[0]}" if single else f"return {', '.join(result)}")
    return ", ".join(args), "\n".join(" " * 8 + line for line in lines)


# ------------------------------------------------------------------ the file


def display_text(text: str, limit: int = 80) -> str:
    """``text`` with every character outside a small whitelist shown as ``?`` (for docstrings)."""
    shown = re.sub(r"[^A-Za-z0-9 _.,:+()\-]", "?", text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _dict_literal(items: Sequence[tuple[str, str]], indent: int) -> str:
    if not items:
        return "{}"
    pad = " " * (indent + 4)
    body = "".join(f"{pad}{k}: {v},\n" for k, v in items)
    return "{\n" + body + " " * indent + "}"


def _wrap_call(prefix: str, expr: str, width: int = 100) -> str:
    line = prefix + expr
    if len(line) <= width or not expr.endswith(")") or "(" not in expr:
        return line
    head, _, rest = expr.partition("(")
    return f"{prefix}{head}(\n{' ' * (len(prefix) - len(prefix.lstrip()) + 4)}{rest[:-1]},\n" \
           f"{' ' * (len(prefix) - len(prefix.lstrip()))})"


def _comment_shows(name: str) -> bool:
    """Whether a ``# name`` comment shows the Caffe name exactly (a safe, printable subset)."""
    return re.fullmatch(r"[A-Za-z0-9 _.,:+()/\-]{1,80}", name) is not None


def _init_line(attr: str, expr: str, caffe: str, folded: str | None = None) -> str:
    """``self.<attr> = <expr>``, with the Caffe layer name as a comment where it differs
    (``folded``: a convolution's own layer, ``caffe`` the BatchNorm folded into it)."""
    comment = f"  # {caffe}" if caffe != attr and _comment_shows(caffe) else ""
    if folded is not None and _comment_shows(folded) and _comment_shows(caffe):
        comment = f"  # {folded} + {caffe}"
    line = _wrap_call(f"        self.{attr} = ", expr, 100 - len(comment))
    if not comment or "\n" not in line:
        return line + comment
    first, rest = line.split("\n", 1)
    return f"{first}{comment}\n{rest}"


def _template() -> string.Template:
    text = resources.files("caffe_bridge.codegen").joinpath("module.py.tmpl").read_text("utf-8")
    return string.Template(text)


def check_identifiers(source: str, filename: str = "<generated>") -> None:
    """Compile ``source`` and require every identifier in it to be plain ASCII."""
    try:
        tree = ast.parse(source, filename)
        compile(tree, filename, "exec")
    except SyntaxError as err:
        raise CodegenError(f"generated source does not compile: {err}") from None
    for node in ast.walk(tree):
        for attr in ("id", "attr", "arg", "name", "asname"):
            ident = getattr(node, attr, None)
            if isinstance(node, (ast.alias, ast.ImportFrom)) and attr == "name":
                continue  # dotted module paths, checked by the import rules
            if isinstance(ident, str) and not _IDENT.match(ident):
                raise CodegenError(f"generated source has a non-ASCII identifier {ident!r}")


def class_name_for(name: str) -> str:
    """A CamelCase class name from a net or file name: ``SE-ResNet-50`` -> ``SEResNet50``,
    ``squeezenet_v1.1_deploy`` -> ``SqueezenetV11Deploy`` (letters' own case kept)."""
    parts = re.split(r"[^A-Za-z0-9]+", name)
    base = "".join(p[:1].upper() + p[1:] for p in parts)[:48]
    if not base or not base[0].isalpha():
        base = f"Net{base}"
    return base


def _class_name(net: Net, stem: str | None, taken: set[str]) -> str:
    """From the net's name, else the file's stem (never a made-up "Caffenet")."""
    name = net.name if re.search(r"[A-Za-z0-9]", net.name or "") else (stem or "CaffeNet")
    return safe_identifier(class_name_for(name), taken)


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes and values, NaNs in the same places (``torch.equal`` first: cheap)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def has_meta(module: nn.Module) -> bool:
    """Whether any tensor of ``module`` (registered or a plain attribute) is on the meta device."""
    for m in module.modules():
        for value in vars(m).values():
            items = value.values() if isinstance(value, dict) else \
                value if isinstance(value, (list, tuple)) else (value,)
            if any(isinstance(t, torch.Tensor) and t.is_meta for t in items):
                return True
    return False


def _rebuild(expr: str, namespace: dict[str, object], original: nn.Module) -> nn.Module:
    """``expr`` evaluated and loaded with ``original``'s state dict.

    It is first built on the meta device (no weight initialisation, which costs more than the
    check) and given ``original``'s tensors; if anything is left on the meta device or that
    fails, it is built and loaded the ordinary way.
    """
    state = original.state_dict()
    if not any(m.training for m in original.modules()):  # a forward may update shared state
        try:
            with torch.device("meta"):
                rebuilt = eval(expr, dict(namespace))  # noqa: S307 - our own expression
            rebuilt.load_state_dict(state, assign=True)
            if not has_meta(rebuilt):
                return rebuilt
        except Exception:  # noqa: BLE001, S110 - the ordinary way below reports the problem
            pass
    rebuilt = eval(expr, dict(namespace))  # noqa: S307 - our own generated expression
    rebuilt.load_state_dict(state)
    return rebuilt


FAST_FORM = """\
This is the fast form: BatchNorm folded into the convolutions, ReLU in place, pooling on
channels-last copies, 1x1 convolutions on large maps as one batched matrix product, a large
batch in parts when no layer mixes samples (Caffe's numbers within float32 rounding, as
measured by caffe-bridge's tests); ``caffe2torch convert --exact`` writes Caffe's own order of
operations instead."""
CALL_IN_PARTS = """

    MICRO_BATCH = $part  # a larger batch runs in parts of this many samples (none is mixed)

    def __call__(self, *inputs: torch.Tensor, **kwargs: torch.Tensor) -> $returns:
        if not kwargs and splittable(self, inputs, self.MICRO_BATCH):
            return run_in_parts(self, inputs, self.MICRO_BATCH)
        return super().__call__(*inputs, **kwargs)"""
EXACT_FORM = """\
This is the exact form: Caffe's own order of operations (``caffe2torch convert`` without
``--exact`` writes the faster form, BatchNorm folded into the convolutions)."""

CHECK_SIDE = 8  # the per-layer check first runs on inputs with spatial sides cut to this


def _same_outputs(original: nn.Module, rebuilt: nn.Module,
                  shapes: Sequence[tuple[int, ...]]) -> bool | None:
    """Both modules compute the same on seeded inputs of ``shapes``; None when ``original``
    itself rejects such values (a layer whose input holds indices, such as rois)."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(s, generator=gen) + 0.5 for s in shapes]
    with torch.no_grad():
        try:
            want = original(*xs)
        except Exception:  # noqa: BLE001 - not a valid input of this layer
            return None
        try:
            got = rebuilt(*xs)
        except Exception:  # noqa: BLE001 - the original ran: the rebuilt one must too
            return False
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    return len(want) == len(got) and all(same_values(a, b)
                                         for a, b in zip(want, got, strict=True))


def _small(shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``shapes`` with batch 1 and every axis after the channel axis at most ``CHECK_SIDE``."""
    return [(min(s[0], 1), s[1], *(min(d, CHECK_SIDE) for d in s[2:])) if len(s) > 2
            else (min(s[0], 1), *s[1:]) if s else s for s in shapes]


def _check_layer(attr: str, name: str, original: nn.Module, expr: str,
                 namespace: dict[str, object], shapes: list[tuple[int, ...]], net: Net) -> None:
    """Rebuild ``attr`` from ``expr``; it must load the state dict and compute identically.

    The comparison runs on small inputs first (batch 1, spatial sides cut to ``CHECK_SIDE``);
    only when the module rejects them or they disagree does it run at the layer's own shapes,
    which then decide. The generated file is checked on the whole net afterwards anyway.
    """
    try:
        rebuilt = _rebuild(expr, namespace, original)
    except Exception as err:  # noqa: BLE001 - report which layer cannot be rebuilt
        raise CodegenError(f"the generated code cannot rebuild submodule {attr!r} "
                           f"({type(original).__name__}): {err}", file=net.source,
                           layer=name) from None
    rebuilt.train(original.training)
    small = _small(shapes)
    same = _same_outputs(original, rebuilt, small) if small != list(shapes) else None
    if not same:  # too small for this layer, or they differ: its own shapes decide
        same = _same_outputs(original, rebuilt, shapes)
    # None: random values are no input for this layer (rois, indices); the whole generated file
    # is run on the net's own values afterwards, this layer included.
    if same is False or repr(rebuilt) != repr(original):
        raise CodegenError(f"submodule {attr!r} ({type(original).__name__}) rebuilt from its "
                           f"captured constructor arguments differs from the converted one; "
                           f"its class should take plain constructor arguments",
                           file=net.source, layer=name)


def _init_lines(net: Net, gm: fx.GraphModule, renderer: _Renderer, stmts: list[_Statement],
                check: bool, progress: Progress | None) -> list[str]:
    """``self.<attr> = <constructor call>`` per submodule, each rebuilt and checked if asked."""
    shapes = {s.attr: [net.blobs[a].shape for a in s.args] for s in stmts}
    names = caffe_layer_names(gm)
    folded = {n.target: n.meta[CAFFE_FOLDED] for n in gm.graph.nodes if CAFFE_FOLDED in n.meta}
    children = list(gm.named_children())
    lines = []
    for k, (attr, module) in enumerate(children):
        expr = renderer.module(module)
        if check:
            _check_layer(attr, names.get(attr, attr), module, expr,
                         renderer.emitter.namespace(), shapes.get(attr, []), net)
        lines.append(_init_line(attr, expr, names.get(attr, attr), folded.get(attr)))
        if progress is not None:
            progress("render", k + 1, len(children))
    return lines


def render_module(
    net: Net,
    gm: fx.GraphModule,
    records: Records,
    *,
    sources: Sequence[tuple[str, str, str]] = (),
    check: bool = True,
    progress: Progress | None = None,
    stem: str | None = None,
    fast: bool = False,
) -> str:
    """The standalone source of ``gm`` (built from ``net`` while ``records`` recorded).

    ``stem`` (the file's name) names the class when the net has no name; ``fast``: ``gm`` is
    the fast form (:func:`caffe_bridge.fast.make_fast`), which the header says.
    """
    import caffe_bridge

    reserved = {"build", "SOURCES", "NET_NAME", "annotations"}
    emitter = _Emitter(reserved)
    inputs, stmts, outputs = _graph_statements(gm, net)
    names = caffe_layer_names(gm)
    children = list(gm.named_children())
    init_lines = _init_lines(net, gm, _Renderer(emitter, records), stmts, check, progress)
    part = int(gm.meta.get(MICRO_BATCH, 0)) if fast else 0
    if part:
        emitter.copy(splittable)
        emitter.copy(run_in_parts)
    class_name = _class_name(net, stem, set(emitter.bound) | reserved)
    emitter.reserved.add(class_name)
    single = len(outputs) == 1
    returns = "torch.Tensor" if single else "tuple[torch.Tensor, ...]"
    fwd_args, fwd_body = _forward_source(net, inputs, stmts, outputs,
                                         set(emitter.bound) | reserved | {class_name}, single)
    shown = [f"{display_text(f)} ({role}, sha256 {digest[:12]}...)"
             for role, f, digest in sources]
    helpers = "".join(f"\n\n{block.rstrip()}\n" for block in emitter.blocks)
    future = "from __future__ import annotations"
    imports = sorted((s for s in emitter.imports if s != future),
                     key=lambda s: (not s.startswith("import "), s))
    caffe_names = [(repr(attr), repr(names[attr])) for attr, _ in children
                   if attr in names and not _comment_shows(names[attr])]
    input_items = [(repr(net.blobs[v].caffe_name), _literal(net.blobs[v].shape)) for v in inputs]
    source = _template().substitute(
        title=f"{display_text(net.name) or 'A Caffe net'}, converted to PyTorch by caffe-bridge.",
        version=caffe_bridge.__version__,
        source_list=", ".join(shown) if shown else "a Caffe net",
        imports="\n".join(imports),
        sources="(\n" + "".join(f"    {_literal(tuple(s))},\n" for s in sources) + ")",
        net_name=repr(net.name),
        helpers=helpers,
        class_name=class_name,
        caffe_names=_dict_literal(caffe_names, 4),
        inputs=_dict_literal(input_items, 4),
        outputs=_literal(tuple(net.blobs[v].caffe_name for v in outputs)),
        init_body="\n".join(init_lines) if init_lines else "        pass",
        forward_args=fwd_args,
        forward_returns=returns,
        forward_body=fwd_body,
        call_method=string.Template(CALL_IN_PARTS).substitute(part=part, returns=returns)
        if part else "",
        form=FAST_FORM if fast else EXACT_FORM,
    )
    check_identifiers(source)
    return source

"""The supported-layers table, generated from the converter registry (README, ``caffe2torch
layers``): it cannot drift from what ``convert`` actually handles."""

from __future__ import annotations

from caffe_bridge.converters.registry import Registry

INPUT_NOTE = (
    "`Input` layers (and the legacy net-level `input:` declarations) are handled by the graph "
    "builder: they become the model's `forward` arguments."
)


def _cell(text: str) -> str:
    """Docstring text as one Markdown table cell (RST ``code`` becomes `code`)."""
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ").strip()


def support_table(registry: Registry | None = None) -> str:
    """A Markdown table of the registered layer types: type, fork, converter module, summary.

    Defaults to the built-in registry with the entry-point plugins loaded, as ``convert`` sees it.
    """
    if registry is None:
        from caffe_bridge import converters

        converters.load_plugins()
        registry = converters.REGISTRY
    rows = ["| Caffe type | Semantics from | Converter | Summary |", "| --- | --- | --- | --- |"]
    for info in registry:
        rows.append(f"| `{_cell(info.type)}` | {_cell(info.fork)} | `{_cell(info.origin)}` | "
                    f"{_cell(info.summary)} |")
    refused = [f"- `{_cell(t)}`: {_cell(why)}" for t, why in registry.refused().items()]
    tail = ("\n\nNot converted, by design (the error says why):\n\n" + "\n".join(refused)
            if refused else "")
    return "\n".join(rows) + "\n\n" + INPUT_NOTE + tail + "\n"

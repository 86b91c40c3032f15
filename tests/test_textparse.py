"""caffe_bridge.textparse: malformed text is a TextSyntaxError with its line."""

from __future__ import annotations

import pytest

from caffe_bridge import schema, textparse


@pytest.mark.parametrize("text", [
    'name: "\\377"',  # a singular string field
    'layer { name: "c" bottom: "ok" bottom: "\\377\\376" }',  # a repeated one (found by fuzzing)
])
def test_string_escaping_bytes_that_are_not_utf8_is_a_syntax_error(text: str) -> None:
    """Our string fields hold UTF-8 text; protobuf refused to append the repeated one with a
    bare UnicodeEncodeError."""
    with pytest.raises(textparse.TextSyntaxError, match="bad value") as err:
        textparse.parse_text(text, schema.NetParameter())
    assert err.value.line == 1


def test_escapes_of_utf8_text_are_read() -> None:
    net = schema.NetParameter()
    textparse.parse_text('layer { bottom: "\\303\\251" bottom: "a\\tb" }', net)
    assert list(net.layer[0].bottom) == ["é", "a\tb"]

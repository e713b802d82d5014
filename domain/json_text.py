"""Canonical JSON text on the hot path, byte-identical to json.dumps and faster.

Ids (domain.ids) and event fingerprints (domain.usage) hash JSON text made with json.dumps
(compact separators, ensure_ascii). When every string in it is printable ASCII without a quote
or a backslash, json.dumps escapes nothing, and the text can be joined directly; anything else
goes through json.dumps. Property tests check both paths give the same bytes.
"""

import json
import re
from collections.abc import Sequence
from typing import Final

# Printable ASCII except '"' (0x22) and '\' (0x5c): the characters json.dumps copies verbatim.
_PLAIN: Final = re.compile(r"[ !#-\[\]-~]*")


def is_plain(text: str) -> bool:
    """Whether json.dumps(text) is text between two quotes, with nothing escaped."""
    return _PLAIN.fullmatch(text) is not None


def string_array(texts: Sequence[str]) -> str:
    """json.dumps(list(texts), separators=(",", ":")), exactly."""
    if texts and is_plain("".join(texts)):
        return '["' + '","'.join(texts) + '"]'
    return json.dumps(list(texts), separators=(",", ":"))


def plain_or_null(text: str | None) -> str:
    """json.dumps(text) for a plain text (is_plain) or None."""
    return "null" if text is None else f'"{text}"'

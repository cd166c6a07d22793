"""What makes two label texts one class: the rule that both ``data.labels`` (checked on
load) and the labels read from data files (:mod:`declora.learning.dataset`) follow."""

from __future__ import annotations

import math
import unicodedata

MISSING = ("", "nan", "none", "null")  # label texts that mean no label


def label_key(value) -> str:
    """A label's class name: numbers by value (1, 1.0 and " 1" are one class; NaN and
    infinity are no label), other text in Unicode NFC form (an NFD "café" from one editor
    is the NFC "café" of another)."""
    text = "" if value is None else unicodedata.normalize("NFC", str(value).strip())
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return ""
    return str(int(number)) if number.is_integer() else repr(number)


def is_missing(key: str) -> bool:
    """Whether a label's class name (:func:`label_key`) means that there is no label."""
    return key.lower() in MISSING

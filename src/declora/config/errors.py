"""The one kind of error a bad config raises: one line that names the key."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; the message is one line meant for the user (a line break in the
    text it quotes, a key or a file name, is shown as ``\\n``)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """``text`` with its line breaks written as ``\\n`` and ``\\r``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")

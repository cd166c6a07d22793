"""security.key_file: 32 random bytes as base64 or hex, readable by its owner only; the
HMAC, encryption and checkpoint keys derived from it apart. Each refusal is one line, exit
2, before anything runs."""

from __future__ import annotations

import base64
import os

import pytest

from declora.cli import main
from declora.config import ConfigError
from declora.protocol import crypt, wire
from declora.protocol.keys import Keys, read_key

SECRET = bytes(range(7, 39))  # 32 distinct values


def key_file(tmp_path, text: bytes, mode: int = 0o600):
    path = tmp_path / "key"
    path.write_bytes(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("text", [base64.b64encode(SECRET) + b"\n", SECRET.hex().encode()])
def test_base64_or_hex_of_32_bytes_is_a_key(tmp_path, text):
    keys = read_key(key_file(tmp_path, text))
    assert keys == Keys(SECRET) and keys.encrypt == Keys(SECRET).encrypt


def test_the_derived_keys_differ_from_each_other_and_from_the_secret():
    keys = Keys(SECRET)
    assert len({bytes(keys), keys.encrypt, keys.checkpoint, SECRET}) == 4
    assert all(len(k) == 32 for k in (bytes(keys), keys.encrypt, keys.checkpoint))
    # the HMAC of a frame is under the derived key, not the secret itself
    assert wire.sign(keys, b"x") != wire.sign(SECRET, b"x")
    with pytest.raises(TypeError, match="Keys"):
        crypt.cipher(SECRET, b"run-0001")  # a raw secret never keys AES-GCM


@pytest.mark.parametrize(
    "text,mode,message",
    [
        (b"passwordpassword", 0o600, "32 random bytes written as base64 or hex"),
        (b"c2VjcmV0", 0o600, "32 random bytes"),  # base64 of 6 bytes
        (base64.b64encode(b"a" * 32), 0o600, "1 distinct values"),
        (base64.b64encode(b"ab" * 16), 0o600, "2 distinct values"),
        (base64.b64encode(SECRET), 0o644, "chmod 600"),
        (base64.b64encode(SECRET), 0o640, "chmod 600"),
    ],
)
def test_short_weak_and_exposed_keys_are_refused_in_one_line(tmp_path, text, mode, message):
    path = key_file(tmp_path, text, mode)
    with pytest.raises(ConfigError, match=message) as err:
        read_key(path)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_world_readable_key_with_exit_2_and_writes_nothing(tmp_path, capsys):
    path = key_file(tmp_path, base64.b64encode(SECRET), 0o644)
    out = tmp_path / "run"
    assert main(["run", "tiny", f"security.key_file={path}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"chmod 600 {path}" in err[0]
    assert not out.exists()

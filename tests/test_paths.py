"""Paths a user cannot use (issue 25): a name longer than the file system takes, a folder
that cannot be written (immutable; read-only for a user who is not root), files the user
cannot read. Each is one line and exit 2, before anything is loaded or written.

The tests run as root here, and root reads and writes past file modes: an immutable folder
(``chattr +i``) stops root too, and the unreadable cases run in a child process forked from
this one that drops to the user nobody (uid 65534) before it calls ``declora``. The child
cannot start a new interpreter (the Python here lives under /root), so it runs the commands
in the modules this process has already imported."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import declora.jobs.survey  # noqa: F401 (imported before the fork: the child cannot read /root)
import declora.jobs.tune  # noqa: F401
import declora.runtimes.distributed.launcher  # noqa: F401
import declora.runtimes.sim  # noqa: F401
from declora.cli import main
from tests.helpers import synthetic_rows, write_csv

LONG = "x" * 300  # a name longer than ext4's 255 bytes
NOBODY = 65534
SMALL = ["nodes=2", "data.test_size=4", "data.val_size=4"]  # 40 rows


def one_line_exit_2(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("declora: error:"), err
    return err


TOO_LONG = [  # (command, the override with a long name, the key the line names)
    ("run", "out={long}", "out="),
    ("survey", "out={long}", "out="),
    ("tune", "out={long}", "out="),
    ("launch", "out={long}", "out="),
    ("launch", "security.key_file={long}", "security.key_file="),
    ("survey", "data.path={long}/site_{{node}}.csv", "site 0: data.path="),
]


@pytest.mark.parametrize(("command", "override", "key"), TOO_LONG)
def test_a_name_too_long_is_one_line(tiny_overrides, tmp_path, capsys, command, override, key):
    labels = ["data.labels=[a,b]"] if "{node}" in override else []
    long = override.format(long=tmp_path / LONG)
    err = one_line_exit_2([command, *tiny_overrides, *labels, long], capsys)
    assert key in err and "File name too long" in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.fixture
def immutable(tmp_path):
    """An empty folder nobody may write in, root included (chattr +i)."""
    folder = tmp_path / "frozen"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize(
    ("command", "inside"),
    [
        ("run", False),
        ("survey", False),
        ("tune", False),
        ("launch", False),
        ("survey", True),
        ("launch", True),
    ],
)
def test_an_output_folder_that_cannot_be_written_is_one_line(
    tiny_overrides, immutable, capsys, command, inside
):
    out = immutable / "run" if inside else immutable
    base = [a for a in tiny_overrides if not a.startswith("out=")]
    err = one_line_exit_2([command, *base, f"out={out}"], capsys)
    assert f"out={out}: cannot write in {immutable}" in err
    assert not any(immutable.iterdir())


# --------------------------------------------------------------- as a user who is not root


def as_nobody(commands: list[list[str]]) -> list[tuple[object, str]]:
    """Each command's exit code (or the exception it raised) and stderr, run by ``main`` in
    a child of this process that runs as the user nobody."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, run the commands, report, exit without cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            results = []
            for args in commands:
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    try:
                        code = main(args)
                    except BaseException as exc:  # noqa: BLE001 (a traceback is the failure)
                        code = f"{type(exc).__name__}: {exc}"
                results.append((code, err.getvalue()))
            with os.fdopen(write, "w") as f:
                json.dump(results, f)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return [tuple(x) for x in json.loads(text)]


@pytest.fixture
def shared():
    """A folder the user nobody can read (pytest's own folders are root's only)."""
    folder = tempfile.mkdtemp(prefix="declora-paths-")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


def test_files_the_user_cannot_read_or_write_are_one_line(shared):
    root_only = lambda path: os.chmod(path, 0o600) or str(path)  # noqa: E731
    rows = synthetic_rows(40)
    data = write_csv(Path(shared) / "data.csv", rows)
    readable = write_csv(Path(shared) / "readable.csv", rows)
    for i in (0, 1):
        os.chmod(write_csv(Path(shared) / f"site_{i}.csv", rows), 0o644)
    root_only(Path(shared) / "site_0.csv")
    config = os.path.join(shared, "c.yaml")
    with open(config, "w") as f:
        f.write("nodes: 2\n")
    key = os.path.join(shared, "key")
    with open(key, "w") as f:
        f.write(os.urandom(32).hex())
    part = os.path.join(shared, "survey.json")
    with open(part, "w") as f:
        f.write("{}")
    readonly = os.path.join(shared, "readonly")
    os.mkdir(readonly, 0o555)
    out = os.path.join(shared, "out")
    sites = [f"data.path={shared}/site_{{node}}.csv", "data.labels=[negative,positive]"]
    cases = {  # what nobody runs -> what its one line says
        "config file": (["run", root_only(config)], "c.yaml: cannot read (Permission denied)"),
        "data file": (
            ["survey", f"data.path={root_only(data)}", *SMALL, f"out={out}"],
            "data.csv: cannot read (Permission denied)",
        ),
        "a site's file": (
            ["survey", *sites, "nodes=2", f"out={out}"],
            "site_0.csv: cannot read (Permission denied)",
        ),
        "key file": (
            ["launch", f"security.key_file={root_only(key)}", f"out={out}"],
            "security.key_file=" + key + ": cannot read (Permission denied)",
        ),
        "survey to combine": (
            ["survey", f"out={out}", "--combine", root_only(part)],
            "survey.json: cannot read (Permission denied)",
        ),
        "read-only out=": (
            ["survey", f"data.path={readable}", *SMALL, f"out={readonly}"],
            f"out={readonly}: cannot write in {readonly}",
        ),
    }
    got = dict(zip(cases, as_nobody([args for args, _ in cases.values()])))
    for name, (_, message) in cases.items():
        code, err = got[name]
        assert code == 2 and message in err and err.count("\n") == 1, (name, code, err)
    assert not os.path.exists(out) and not os.listdir(readonly)

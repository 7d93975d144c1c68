"""reformer_hf.output_lock: one run per output folder, stale locks taken over, clear refusals."""

import json
import os
import socket
import subprocess
import sys

import pytest

from reformer_hf.output_lock import LOCK_NAME, OutputDirLock, OutputDirLocked, check_output_dir


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, pid, hostname=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "hostname": hostname or socket.gethostname()}))


def test_the_lock_holds_this_process_and_goes_at_the_end_of_the_block(tmp_path):
    folder = tmp_path / "run"
    with OutputDirLock(folder):
        assert json.loads((folder / LOCK_NAME).read_text()) == {"pid": os.getpid(), "hostname": socket.gethostname()}
    assert not (folder / LOCK_NAME).exists()


def test_the_lock_goes_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError), OutputDirLock(tmp_path):
        raise KeyError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_lock_on_a_held_folder_is_refused_naming_folder_and_pid(tmp_path):
    with OutputDirLock(tmp_path):
        expected = f"--output-dir={str(tmp_path)!r} is in use by the run with pid {os.getpid()}"
        with pytest.raises(OutputDirLocked, match=expected):
            OutputDirLock(tmp_path).__enter__()
        with pytest.raises(OutputDirLocked, match=expected):
            check_output_dir(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    stale_pid = dead_pid()
    write_lock(tmp_path, stale_pid)
    check_output_dir(tmp_path)  # a stale lock does not stop a run before its start
    with pytest.warns(UserWarning, match=f"took over a stale lock of pid {stale_pid}"), OutputDirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_lock_from_another_host_is_refused_as_it_cannot_be_checked(tmp_path):
    write_lock(tmp_path, dead_pid(), hostname="elsewhere.example")
    with pytest.raises(OutputDirLocked, match=r"on host 'elsewhere.example'.*delete the lock file"):
        OutputDirLock(tmp_path).__enter__()
    assert (tmp_path / LOCK_NAME).exists()


def test_an_unreadable_lock_file_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text("not json")
    with pytest.raises(OutputDirLocked, match=r"holds an unreadable lock file .*\.reformer_hf\.lock"):
        OutputDirLock(tmp_path).__enter__()


def test_release_leaves_a_lock_that_another_run_took(tmp_path):
    lock = OutputDirLock(tmp_path).__enter__()
    write_lock(tmp_path, 1)
    lock.__exit__(None, None, None)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == 1


def test_an_output_dir_that_is_a_file_or_under_one_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--output-dir='.*file' exists and is not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match=r"--out=.*'.*file' is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "run", option="--out")

"""One training run per output folder: a lock file holding the owner's pid and host.

`OutputDirLock(folder)` creates `folder/.reformer_hf.lock` with O_CREAT | O_EXCL (atomic: of two
runs starting together exactly one creates it) and writes {"pid", "hostname"} into it.  A second
run into the folder is refused with OutputDirLocked naming the folder and the owner's pid and
host.  A lock left by a process that no longer runs on this host (a SIGKILL, a power cut) is
stale: it is taken over with a warning.  A lock from another host cannot be checked from here
and is always refused.  The lock is removed when the `with` block ends, normally or by an
exception, and at SIGTERM (turned into SystemExit so that the block's exit runs).
"""

import json
import os
import signal
import socket
import sys
import threading
import warnings
from pathlib import Path

LOCK_NAME = ".reformer_hf.lock"


class OutputDirLocked(RuntimeError):
    """Another live run holds the output folder."""


def check_output_dir(path, option="--output-dir"):
    """Before any work: refuse an output folder (the script's `option`) that is a file or lies under
    one with NotADirectoryError, and one a live run holds with OutputDirLocked."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option}={str(path)!r} exists and is not a folder; choose a folder path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{option}={str(path)!r}: {str(parent)!r} is a file, not a folder")
    OutputDirLock(path, option).refuse_if_held()


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)


class OutputDirLock:
    """`with OutputDirLock(folder):` holds the folder's lock for the block (creating the folder);
    errors name the folder as the script's `option`."""

    def __init__(self, folder, option="--output-dir"):
        self.folder = Path(folder)
        self.option = option
        self.path = self.folder / LOCK_NAME
        self.owner = {"pid": os.getpid(), "hostname": socket.gethostname()}
        self.previous_sigterm = None

    def __enter__(self):
        check_output_dir(self.folder, self.option)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._acquire()
        if threading.current_thread() is threading.main_thread():
            self.previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc_info):
        if self.previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self.previous_sigterm)
        self.release()
        return False

    def _acquire(self):
        for _ in range(3):  # a stale lock taken over by another run between our reads: look again
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder_text = self._read_holder_text()
                if holder_text is None:
                    continue  # it went away between the open and the read
                holder = self._parse_holder(holder_text)
                self._refuse_live(holder)
                self._take_over_stale(holder_text, holder)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(self.owner, handle)
                handle.flush()
                os.fsync(handle.fileno())
            return
        raise OutputDirLocked(f"{self.option}={str(self.folder)!r}: could not take the lock {self.path}; other runs "
                              "keep taking it over")

    def refuse_if_held(self):
        """Raise OutputDirLocked if a live run holds the folder (a check before any work; the
        lock itself is taken by `with`)."""
        holder_text = self._read_holder_text()
        if holder_text is not None:
            self._refuse_live(self._parse_holder(holder_text))

    def _refuse_live(self, holder):
        if holder["hostname"] != self.owner["hostname"] or _process_alive(holder["pid"]):
            raise OutputDirLocked(
                f"{self.option}={str(self.folder)!r} is in use by the run with pid {holder['pid']} on host "
                f"{holder['hostname']!r} (lock file {self.path}); wait for it to finish, or choose another "
                "folder.  If that run is gone (e.g. on another machine), delete the lock file.")

    def _read_holder_text(self):
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _parse_holder(self, text):
        try:
            holder = json.loads(text)
            if isinstance(holder.get("pid"), int) and isinstance(holder.get("hostname"), str):
                return holder
        except (json.JSONDecodeError, AttributeError):
            pass
        raise OutputDirLocked(f"{self.option}={str(self.folder)!r} holds an unreadable lock file {self.path} "
                              f"({text[:80]!r}); if no run is using the folder, delete it")

    def _take_over_stale(self, holder_text, holder):
        """Move the stale lock aside, checking that what moved is the stale one and not a new owner's."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8") != holder_text:
            os.replace(aside, self.path)  # a new owner's lock: put it back; the next attempt refuses
            return
        aside.unlink()
        warnings.warn(f"{self.path}: took over a stale lock of pid {holder['pid']}, which no longer runs on this "
                      "host (an earlier run was killed)", stacklevel=3)

    def release(self):
        """Remove the lock if it is still this process's."""
        text = self._read_holder_text()
        if text is not None and text == json.dumps(self.owner):
            self.path.unlink()


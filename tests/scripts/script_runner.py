"""Running the training scripts as real subprocesses, on real local text."""

import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
ACCELERATE_CONFIGS = SCRIPTS / "accelerate_configs"


def stdlib_package(name):
    """A package of this Python's standard library: real source text present on every machine."""
    path = Path(sysconfig.get_paths()["stdlib"]) / name
    assert path.is_dir(), f"the standard library has no package {name!r} at {path}"
    return path


def script_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_script(name, *args, timeout=240):
    """Run scripts/<name> with `python`; return the CompletedProcess (stdout and stderr as text)."""
    command = [sys.executable, str(SCRIPTS / name), *map(str, args)]
    return subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=timeout)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(config_name, script, *args, timeout=240):
    """`accelerate launch --config_file scripts/accelerate_configs/<config_name> scripts/<script> ...`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config_name),
               "--main_process_port", str(free_port()), str(SCRIPTS / script), *map(str, args)]
    return subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=timeout)


def check(completed):
    assert completed.returncode == 0, f"exit {completed.returncode}\nstdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-6000:]}"
    return completed

"""Running the training scripts as real subprocesses, on real local text."""

import os
import signal
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
    return run_with_deadline([sys.executable, str(SCRIPTS / name), *map(str, args)], timeout)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(config_name, script, *args, timeout=240):
    """`accelerate launch --config_file scripts/accelerate_configs/<config_name> scripts/<script> ...`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config_name),
               "--main_process_port", str(free_port()), str(SCRIPTS / script), *map(str, args)]
    return run_with_deadline(command, timeout)


def run_with_deadline(command, timeout):
    """Run `command` in its own process group; return the CompletedProcess (stdout and stderr as text).

    Past `timeout` seconds every process of the group (the launcher and its workers) gets SIGABRT,
    on which Python's fault handler prints each thread's stack, then SIGKILL; the test then fails
    with those stacks and the output so far, so a hang says where it hangs."""
    env = {**script_env(), "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        raise AssertionError(f"{command[1:]} ran past {timeout} s; the stacks at SIGABRT and the output so far:\n"
                             f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-12000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def check(completed):
    assert completed.returncode == 0, f"exit {completed.returncode}\nstdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-6000:]}"
    return completed


def load_script(name):
    """scripts/<name> as a module (its main() callable in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{Path(name).stem}", SCRIPTS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_forked(name, *args, log_path, environment=None, timeout=240):
    """Run scripts/<name>'s main(args) in a forked child of this process and return its exit code
    (negative: the signal that ended it, e.g. -9 for SIGKILL); stdout and stderr go to `log_path`.

    A fork skips the seconds of importing torch and transformers that every new interpreter
    spends, so a test can kill and resume a script many times.  The child runs one intra-op thread
    (a thread pool inherited across fork is not usable) and prints its warnings to stderr as a new
    interpreter would, not into pytest's record of this process's warnings."""
    import multiprocessing
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    module = load_script(name)

    def child():
        import torch

        torch.set_num_threads(1)
        os.environ.update(environment or {})
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            try:
                code = module.main([str(arg) for arg in args])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"{name} {args} ran past {timeout}s; log: {Path(log_path).read_text()[-3000:]}")
    return process.exitcode

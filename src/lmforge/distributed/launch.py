"""``lmforge train --nproc N``: the same command, started N times by torchrun.

torchrun (``torch.distributed.run``) starts the processes, gives them their ranks and a
rendezvous, and stops them all when one fails; lmforge only builds its command line. For
several machines run torchrun yourself (docs/distributed.md): ``lmforge train`` reads the
standard environment torchrun sets, whoever started it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def strip_options(argv: Sequence[str], options: dict[str, bool]) -> list[str]:
    """``argv`` without the given options; ``options`` maps each to whether it takes a value.

    Handles ``--opt VALUE`` and ``--opt=VALUE``.
    """
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = options[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of ``nproc`` processes on this machine (torchrun's default is 1)."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(1, cores // nproc)


def launch_local(argv: Sequence[str], nproc: int, output_dir: Path) -> int:
    """Run ``lmforge <argv> --output output_dir`` in ``nproc`` processes on this machine; return
    the exit code.

    The run directory is fixed here so that every process writes to the same one.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "lmforge",
        *argv,
        "--output",
        str(output_dir),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["LMFORGE_LAUNCHER"] = "nproc"
    log.info("launching %d processes: %s", nproc, " ".join(command[2:]))
    # Ctrl-C reaches every process of the terminal's group: the workers checkpoint and stop, and
    # torchrun waits for them. This process only waits for torchrun.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(command, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)

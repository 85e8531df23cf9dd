"""Torch threads on a shared machine: OpenMP waits that sleep, and the count from ``SURGEON_THREADS``.

By default OpenMP's idle threads spin (libgomp: ~300k polls before sleeping)
waiting for the next parallel region. With two jobs on two cores the spinning
threads take the cores the working ones need: SmolLM2 forward passes ran 7.7x
slower beside two other 2-thread torch jobs, 1.5x with passive waits, where a
fair share of 2 cores among 3 jobs is 3x (``benches/bench_busy.py``). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads
sleep (``KMP_BLOCKTIME=0`` says the same to Intel's OpenMP). OpenMP reads these
once, when torch loads its runtime, so :func:`quiet_waits` must run before
``import torch``: the CLI calls it before any command imports its engine,
compare hands it to each arm's child process, the test suite's conftest calls
it first. A value the user set is kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def thread_count(env: MutableMapping[str, str] | None = None) -> int:
    """``SURGEON_THREADS``, else one per core."""
    env = os.environ if env is None else env
    return max(1, int(env.get("SURGEON_THREADS") or os.cpu_count() or 1))


def quiet_waits(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set the passive wait policy in ``env`` (default: this process's environment) unless already set."""
    env = os.environ if env is None else env
    for k, v in WAIT_ENV.items():
        env.setdefault(k, v)
    return env


def configure(*, lazy: bool = False) -> int:
    """Passive waits, and ``SURGEON_THREADS`` torch threads; returns the count.

    ``lazy``: leave torch unimported if it is (``apply`` copies shards while the
    script imports it; ``fixture`` only prints a path) and let torch take the
    count from ``OMP_NUM_THREADS`` when it loads.
    """
    quiet_waits()
    n = thread_count()
    if lazy and "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(n)
        return n
    import torch

    torch.set_num_threads(n)
    return n


def for_job(n: int) -> None:
    """A worker process's start (compare's families side by side): ``n`` threads for it and its children.

    Runs before the worker imports torch, so OpenMP reads the passive waits and the count.
    """
    os.environ["SURGEON_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(n)
    configure(lazy=True)

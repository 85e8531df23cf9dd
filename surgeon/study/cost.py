"""What a step cost the process that ran it: peak resident memory, read where Linux keeps it."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak resident set (``VmHWM``), in MB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux that value survives
    ``fork``/``exec``, so a child started by a 1.5 GB parent reports 1.5 GB
    however little it allocates itself.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

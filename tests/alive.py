"""Test helper: how many tensors made by a code path are alive at once (their memory, not their Python objects).

``Alive.track(t)`` returns a copy of ``t`` whose storage is a numpy array with a
finalizer: the count drops only when the last tensor, view, numpy array or
memoryview over that storage is gone, so a writer that keeps the bytes of
every value it wrote counts them all.
"""

from __future__ import annotations

import threading
import weakref

import torch


class Alive:
    def __init__(self):
        self.now = self.peak = self.made = 0
        self.lock = threading.Lock()

    def track(self, t: torch.Tensor) -> torch.Tensor:
        arr = t.numpy().copy()
        with self.lock:
            self.now, self.made = self.now + 1, self.made + 1
            self.peak = max(self.peak, self.now)
        weakref.finalize(arr, self._gone)
        return torch.from_numpy(arr)

    def _gone(self):
        with self.lock:
            self.now -= 1

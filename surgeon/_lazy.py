"""The one lazy-import mechanism: heavy third-party modules for modules on the header-only path.

``surgeon inspect`` and ``surgeon.open`` read headers only and must start in
~0.1 s, so the modules they import (``surgeon.io``, ``surgeon.roles``) never
import torch at module level. Those that need torch in some functions write
``from surgeon._lazy import torch``: a module object whose first attribute
access imports the real torch. Everything else imports torch at the top, and
surgeon's own modules are always imported at the top of each file; only the
CLI (:mod:`surgeon.cli`) imports a command's engine when the command runs.
"""

from __future__ import annotations

import importlib
import sys
import types


class LazyModule(types.ModuleType):
    """Stands in for module ``name`` until an attribute is read, then becomes a view of it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_real"] = None

    def _load(self):
        real = self.__dict__["_real"]
        if real is None:
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return real

    def __getattr__(self, attr):
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())


def lazy(name: str) -> types.ModuleType:
    """The module if it is already imported, else a :class:`LazyModule` for it."""
    return sys.modules.get(name) or LazyModule(name)


torch = lazy("torch")

"""llama.cpp, the tool: where its converters come from, how they run, and its model in Python.

surgeon writes no GGUF model converter of its own: llama.cpp's ``convert_hf_to_gguf.py`` and
``convert_lora_to_gguf.py`` are the ecosystem's tools and keep up with new families. They are
found in this order (first match wins):

1. ``converter=`` / ``--converter``: ``convert_hf_to_gguf.py`` itself, or a llama.cpp checkout;
2. ``$SURGEON_LLAMA_CPP``: a llama.cpp checkout;
3. the llama.cpp inside the source distribution of the *installed* llama-cpp-python version — the
   same llama.cpp that will read the file — from ``$SURGEON_CACHE/sdist`` (``pip download`` when
   missing; ``scripts/llama_cpp_wheel.sh`` keeps it there), unpacked once (converters, gguf-py,
   conversion/, and the model loaders in src/ that :mod:`surgeon.export.gguf` reads) into
   ``$SURGEON_CACHE/llama.cpp/<version>/``.

llama.cpp itself runs through llama-cpp-python (:func:`open_llama`), built once per machine by
``make install``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from surgeon._threads import thread_count
from surgeon.errors import SurgeonError
from surgeon.io.atomic import cache_dir

_SDIST_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/", "conversion/", "src/models/",
                "src/llama-model.cpp", "LICENSE")


class GGUFError(SurgeonError):
    """No converter, a checkpoint llama.cpp cannot represent, a failed conversion, or a file that disagrees."""


@dataclass(frozen=True)
class LlamaCppSource:
    """A llama.cpp source tree holding the converters (and, where present, the model loaders in src/)."""

    root: Path
    origin: str  # "--converter", "$SURGEON_LLAMA_CPP" or "llama-cpp-python <version> sdist"

    @property
    def converter(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def lora_converter(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    def run(self, script: Path, *args: str, what: str) -> None:
        """Run one of its converters with this Python; a failure is one line: ``what`` and the converter's error."""
        env = dict(os.environ)
        env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not the PyPI gguf
        env.setdefault("OMP_NUM_THREADS", str(thread_count()))
        r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise GGUFError(f"{what}: llama.cpp's {script.name} ({self.origin}) failed: {_last_error(r.stderr)}")


def find_llama_cpp(converter: str | os.PathLike | None = None) -> LlamaCppSource:
    """The llama.cpp tree to convert with, in the order of the module docstring."""
    if converter is not None:
        p = Path(converter)
        root = p.parent if p.is_file() else p
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise GGUFError(f"{p}: neither convert_hf_to_gguf.py nor a llama.cpp checkout containing it")
        return LlamaCppSource(root.resolve(), "--converter")
    env = os.environ.get("SURGEON_LLAMA_CPP")
    if env:
        if not (Path(env) / "convert_hf_to_gguf.py").is_file():
            raise GGUFError(f"$SURGEON_LLAMA_CPP={env}: no convert_hf_to_gguf.py there")
        return LlamaCppSource(Path(env).resolve(), "$SURGEON_LLAMA_CPP")
    ver = llama_cpp_version()
    if ver is None:
        raise GGUFError("no llama.cpp converter: install llama-cpp-python (make install does, via "
                        "scripts/llama_cpp_wheel.sh), set $SURGEON_LLAMA_CPP to a llama.cpp checkout, "
                        "or pass --converter")
    return LlamaCppSource(_unpacked_sdist(ver), f"llama-cpp-python {ver} sdist")


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python version (without loading its shared library)."""
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def _unpacked_sdist(ver: str) -> Path:
    """$SURGEON_CACHE/llama.cpp/<version>: the converter parts of llama-cpp-python's vendored llama.cpp."""
    dest = cache_dir() / "llama.cpp" / ver
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    sdist = _sdist(ver)
    prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ver}-", dir=dest.parent))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else ""
                if rel and (m.isfile() or m.isdir()) and any(rel == p or rel.startswith(p) for p in _SDIST_PARTS):
                    m.name = rel
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise GGUFError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
        try:
            tmp.rename(dest)
        except OSError:  # another process unpacked it first
            if not (dest / "convert_hf_to_gguf.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _sdist(ver: str) -> Path:
    sdist_dir = cache_dir() / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{ver}.tar.gz"
    if not sdist.is_file():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                            f"llama-cpp-python=={ver}", "-d", str(sdist_dir)], capture_output=True, text=True)
        if r.returncode != 0 or not sdist.is_file():
            raise GGUFError(f"{sdist}: missing, and pip download of llama-cpp-python=={ver} failed "
                            f"({_last_error(r.stderr)})")
    return sdist


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^(\w+\.)*\w*(Error|Exception)\b", ln)]
    return (errors or lines or ["no output"])[-1][:300]


# --------------------------------------------------------------------------- llama.cpp in Python


def open_llama(path: str | os.PathLike, *, n_ctx: int = 256, lora: str | os.PathLike | None = None,
               all_logits: bool = False):
    """A llama-cpp-python model; ``all_logits`` keeps every position's logits (:func:`llama_logits` needs
    them), otherwise only the last position's are computed (Gemma-3's 262k-vocabulary head is the cost)."""
    try:
        from llama_cpp import Llama  # built per machine by make install, not a pip dependency
    except ImportError as e:
        raise GGUFError(f"llama-cpp-python is not installed ({e}); make install builds it once per machine") from None
    n = thread_count()
    kw = {"lora_path": str(lora)} if lora else {}
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n, n_threads_batch=n,
                     logits_all=all_logits, verbose=False, seed=0, **kw)
    except (ValueError, RuntimeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GGUFError(f"{path}: llama.cpp cannot load it ({why})") from None


def llama_follow(llm, ids: list[int], n: int, forced: list[int] | None = None) -> tuple[list[int], list[int]]:
    """llama.cpp's argmax and runner-up at each of n steps after ``ids``, fed ``forced`` tokens (default: its own)."""
    llm.reset()
    llm.eval(ids)
    top, second = [], []
    for i in range(n):
        logits = _last_logits(llm)
        two = np.argpartition(-logits, 2)[:2]
        two = two[np.argsort(-logits[two])]
        top.append(int(two[0]))
        second.append(int(two[1]))
        if i + 1 < n:
            llm.eval([forced[i] if forced else top[-1]])
    return top, second


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    """n greedy tokens from llama.cpp after ``ids`` (argmax of the logits; no sampler, no stop token)."""
    return llama_follow(llm, ids, n)[0]


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of ``ids``, (len(ids), vocab); the model needs ``all_logits``."""
    llm.reset()
    llm.eval(ids)
    if not llm._logits_all:
        return _last_logits(llm)[None]
    return np.array(llm.scores[: len(ids)])


def _last_logits(llm) -> np.ndarray:
    """The last evaluated position's logits (llama-cpp-python keeps them in ``scores`` only with all_logits)."""
    if llm._logits_all:
        return llm.scores[llm.n_tokens - 1]
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()

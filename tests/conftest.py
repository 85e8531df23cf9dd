"""Shared fixtures: the two real models (built once per machine) and tiny random families."""

from __future__ import annotations

import os

from surgeon._threads import configure, quiet_waits

quiet_waits()  # before torch loads (pytest imports conftest first): idle OpenMP threads sleep, not spin
os.environ.setdefault("SURGEON_THREADS", "2")
configure()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a bf16 safetensors directory (read-only: never write into it)."""
    from surgeon.fixtures import fixture

    return fixture("smollm2")


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M base as a bf16 safetensors directory (read-only)."""
    from surgeon.fixtures import fixture

    return fixture("gemma3")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny("llama") -> path of a tiny random checkpoint of that family (built once per session)."""
    from tiny import build_tiny

    cache = {}

    def make(model_type: str, **overrides):
        key = (model_type, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = build_tiny(model_type, tmp_path_factory.mktemp(model_type) / "ckpt", **overrides)
        return cache[key]

    return make

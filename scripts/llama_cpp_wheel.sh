#!/usr/bin/env bash
# Install llama-cpp-python (CPU) into a venv, building its wheel at most once per machine.
#
#   scripts/llama_cpp_wheel.sh PYTHON        e.g. scripts/llama_cpp_wheel.sh .venv/bin/python
#
# The wheel and the source distribution are cached in $SURGEON_CACHE/wheels and
# $SURGEON_CACHE/sdist (default ~/.cache/surgeon). The sdist is kept because llama.cpp's converters
# (convert_hf_to_gguf.py, convert_lora_to_gguf.py, gguf-py/, conversion/) ship inside it and
# `surgeon export gguf` runs them from there. Building from source takes ~10 minutes on 2 cores.
set -euo pipefail
PY=${1:?usage: llama_cpp_wheel.sh PYTHON}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${SURGEON_CACHE:-$HOME/.cache/surgeon}
WHEELS=$CACHE/wheels
SDIST=$CACHE/sdist
mkdir -p "$WHEELS" "$SDIST"

if [ ! -f "$SDIST/llama_cpp_python-$VERSION.tar.gz" ]; then
    "$PY" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$SDIST"
fi

wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $VERSION (CPU, once per machine, ~10 min on 2 cores) into $WHEELS" >&2
    tmp=$(mktemp -d "$WHEELS/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        nice -n 10 "$PY" -m pip wheel -q --no-deps "$SDIST/llama_cpp_python-$VERSION.tar.gz" -w "$tmp"
    mv "$tmp"/llama_cpp_python-*.whl "$WHEELS"/          # appears only when complete
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
fi
"$PY" -m pip install -q "$wheel"

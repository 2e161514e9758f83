"""The peers that bench/peers.py times against the engine, each on the engine's own weights:
llama.cpp (a GGUF written by llamacpp.py), CTranslate2 (a model directory written by ct2.py) and
Hugging Face transformers (hf.py: eager, and static cache + torch.compile).

llama-cpp-python, ctranslate2 and gguf are the optional extra `pip install -e '.[peers]'`; each
module imports its peer lazily, so `available()` can report a missing one instead of failing.
"""
from __future__ import annotations

import importlib.util

PACKAGES = {"llama.cpp": ("llama_cpp", "gguf"), "CTranslate2": ("ctranslate2",)}


def missing(peer: str) -> list[str]:
    """The Python packages `peer` needs that are not installed (empty: it can run)."""
    return [p for p in PACKAGES.get(peer, ()) if importlib.util.find_spec(p) is None]

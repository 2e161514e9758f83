"""decoding: one engine for greedy, sampling, beam, speculative and parallel decoding."""
from . import hf  # decoding.hf.install(model): the drop-in for HF's model.generate
from .api import generate
from .config import GenerationConfig
from .output import GenerationOutput, GenerationStats

__all__ = ["GenerationConfig", "GenerationOutput", "GenerationStats", "generate", "hf"]

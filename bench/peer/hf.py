"""Hugging Face transformers as a peer, on `to_hf` of the native model (identical weights):
`generate` eager (its default dynamic cache) and with a static cache and a compiled forward.

On CPU `generate` compiles only when told to (CompileConfig's `_compile_all_devices`); mode
"default" because "reduce-overhead" means CUDA graphs. Compilation happens in the first calls of
each shape, which the bench's warm-up absorbs.
"""
from __future__ import annotations

import torch


def compile_config(backend: str = "inductor"):
    from transformers import CompileConfig
    cc = CompileConfig(fullgraph=False, dynamic=False, backend=backend, mode="default" if backend == "inductor" else None)
    cc._compile_all_devices = True  # a class attribute, not a constructor argument
    return cc


class HF:
    """HF `generate`, greedy or beam, eos off; `static=True`: static cache + torch.compile."""

    def __init__(self, hf_model, static: bool = False, backend: str = "inductor"):
        self.model, self.static = hf_model, static
        self.extra = dict(cache_implementation="static", compile_config=compile_config(backend)) if static else {}

    def generate(self, ids: torch.Tensor, new_tokens: int, num_beams: int = 1) -> torch.Tensor:
        with torch.inference_mode():
            seq = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, num_beams=num_beams,
                                      eos_token_id=None, **self.extra)
        return seq[:, ids.shape[1]:]

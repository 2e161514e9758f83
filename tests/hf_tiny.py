"""Tiny random-weight Hugging Face models of several families, built from configs (no downloads)."""
from __future__ import annotations

import torch
import transformers

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)


def tiny(family: str, seed: int = 0, **overrides):
    """An eval-mode fp32 HF causal LM of `family` with random weights."""
    torch.manual_seed(seed)
    kw = dict(COMMON)
    if family == "llama":
        cfg = transformers.LlamaConfig(**{**kw, "num_key_value_heads": 2, **overrides})
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**{**kw, "num_key_value_heads": 2, **overrides})
        cls = transformers.Qwen2ForCausalLM
    elif family == "mistral":
        cfg = transformers.MistralConfig(**{**kw, "num_key_value_heads": 1, "sliding_window": None, **overrides})
        cls = transformers.MistralForCausalLM
    elif family == "gpt2":
        cfg = transformers.GPT2Config(**{**dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                                bos_token_id=1, eos_token_id=2, pad_token_id=0), **overrides})
        cls = transformers.GPT2LMHeadModel
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=256, bos_token_id=1,
                                         eos_token_id=2, pad_token_id=0, **overrides)
        cls = transformers.GPTNeoXForCausalLM
    elif family == "gemma":
        cfg = transformers.GemmaConfig(**{**kw, "num_key_value_heads": 1, "head_dim": 16, **overrides})
        cls = transformers.GemmaForCausalLM
    elif family == "phi3":
        cfg = transformers.Phi3Config(**{**kw, "num_key_value_heads": 2, **overrides})
        cls = transformers.Phi3ForCausalLM
    else:
        raise ValueError(family)
    model = cls(cfg).eval()
    # HF's init (std 0.02) makes near-uniform logits; larger weights give decisive, varied argmaxes
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
    return model


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def hf_greedy(hf, ids, mask, max_new_tokens: int, **kw):
    """HF's own greedy generate: the oracle of the exact modes (a max_new_tokens in kw wins)."""
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, do_sample=False, **{"max_new_tokens": max_new_tokens, **kw})


def mid_eos(ref, T):
    """A token the reference emits mid-sequence in some row, but not as any row's first token."""
    import pytest
    new = ref[:, T:]
    for step in range(3, new.shape[1] - 3):
        for row in new.tolist():
            if row[step] not in new[:, 0].tolist() and row[step] not in row[:step]:
                return row[step]
    pytest.skip("no token suitable as a mid-sequence eos")

"""CTranslate2 as a peer: convert the HF export of the native model (models/hf_weights.to_hf, same
weights) with CTranslate2's own Transformers converter, float32, and decode it with
`Generator.generate_batch` (greedy: sampling_topk=1; beam: beam_size, one hypothesis back).

The converter reads a tokenizer only for its vocabulary and special tokens; the bench's token list
(vocab.py) stands in for it, so no tokenizer files are needed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .vocab import Vocab


class _VocabTokenizer:
    """What CTranslate2's Llama loader asks of a tokenizer, served from a Vocab."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.bos_token, self.eos_token = vocab.pieces[vocab.bos_id], vocab.pieces[vocab.eos_id]
        self.unk_token = vocab.pieces[vocab.unk_id]

    def get_vocab(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.vocab.pieces)}


def write_ct2(hf_model, out_dir: str | Path, vocab: Vocab) -> Path:
    """A CTranslate2 model directory (float32) from an HF LlamaForCausalLM."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _VocabTokenizer(vocab)

    if len(set(vocab.pieces)) != len(vocab):
        raise ValueError("CTranslate2 needs distinct token pieces")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as hf_dir:
        hf_model.save_pretrained(hf_dir, safe_serialization=True)
        Converter(hf_dir).convert(str(out_dir), quantization="float32", force=True)
    return out_dir


class CT2:
    """Greedy and beam decoding of a converted model on CPU, fp32, `threads` threads, eos off."""

    def __init__(self, path: str | Path, vocab: Vocab, threads: int = 1):
        import ctranslate2
        self.generator = ctranslate2.Generator(str(path), device="cpu", compute_type="float32",
                                               intra_threads=threads, inter_threads=1)
        self.pieces = vocab.pieces

    def generate(self, ids: torch.Tensor, new_tokens: int, num_beams: int = 1) -> torch.Tensor:
        """(B, T) prompt ids -> (B, new_tokens): the best hypothesis of each row."""
        prompts = [[self.pieces[t] for t in row] for row in ids.tolist()]
        results = self.generator.generate_batch(
            prompts, max_length=new_tokens, min_length=new_tokens, beam_size=num_beams, sampling_topk=1,
            num_hypotheses=1, include_prompt_in_result=False, end_token=[], return_scores=False)
        out = torch.tensor([r.sequences_ids[0] for r in results])
        if out.shape != (ids.shape[0], new_tokens):
            raise RuntimeError(f"CTranslate2 returned {tuple(out.shape)} tokens, expected {(ids.shape[0], new_tokens)}")
        return out

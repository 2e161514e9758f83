"""Host syncs per round of every strategy, counted (docs/DESIGN.md 6): every read of a tensor
value on the host (.item(), .tolist(), bool/int/float of a tensor, .cpu()) is intercepted with a
torch function mode and charged to the product file that asked for it. On a GPU each is a stall
of the launch queue, so the engine keeps them to a fixed few per round; this pins the numbers the
design document gives, per strategy, for the engine's side (decoding/) and the model's (models/).

A round is what happens between two target forwards (a decode step, a verify round, a beam step).
Counted in the steady state (no prompt, no last round), batch 2, no stop strings, no streamer.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import decoding
from models import DecoderConfig, LlamaDecoder
from models.yoco import YOCOConfig, YOCODecoder
from models.heads import BlockwiseHeads, HeadsConfig

ROOT = Path(__file__).resolve().parent.parent
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}
ROWS = [[5, 17, 23, 8, 41, 5, 17], [11, 4, 5, 17]]


class HostReads(TorchFunctionMode):
    """Counts host reads per round and per layer ("decoding", "models", "kernels")."""

    def __init__(self):
        super().__init__()
        self.rounds: list[Counter] = [Counter()]

    def next_round(self, *_):
        self.rounds.append(Counter())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS:
            frame = sys._getframe(1)
            while frame is not None:
                path = Path(frame.f_code.co_filename)
                if path.is_relative_to(ROOT) and path.parts[len(ROOT.parts)] in ("decoding", "models", "kernels"):
                    self.rounds[-1][path.parts[len(ROOT.parts)]] += 1
                    break
                frame = frame.f_back
        return func(*args, **(kwargs or {}))


def model(seed=0, dim=32):
    torch.manual_seed(seed)
    return LlamaDecoder(DecoderConfig(vocab_size=64, dim=dim, n_layers=2, n_heads=4, n_kv_heads=2,
                                      max_seq_len=128, pad_token_id=0)).eval()


def yoco(seed=0):
    torch.manual_seed(seed)
    return YOCODecoder(YOCOConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, window=4,
                                  max_rollback=8, max_seq_len=128, pad_token_id=0)).eval()


def per_round(target, rows=ROWS, **kw) -> tuple[int, int]:
    """(decoding, models): the most host reads any steady-state round took (the rounds after the
    prefill and before the last), one layer at a time."""
    reads = HostReads()
    handle = target.register_forward_pre_hook(reads.next_round)
    try:
        with reads:
            decoding.generate(target, rows, max_new_tokens=16, eos_token_id=None, **kw)
    finally:
        handle.remove()
    steady = reads.rounds[2:-1]
    assert len(steady) >= 2, "too few rounds to see a steady state"
    return max(r["decoding"] for r in steady), max(r["models"] for r in steady)


# strategy -> (arguments, host reads per round in decoding/, in models/). The models' side of a
# native Llama on CPU: none per forward (the embedding lookup is the ids' range check, the cache
# keeps a host-side bound on its longest row), 1 per truncate (its bounds check, which also reads
# the new longest length back: the bound stays exact), 1 per beam reorder (the index check). YOCO's
# truncate reads its range check, its floor check (max_rollback) and the new longest length at once.
CASES = {
    "greedy": (dict(), 1, 0),  # all_finished
    # + top-k's numpy selection of the k-th score (processors.top_k): a view of CPU scores, no sync on
    # the CPU, the only device it runs on (a GPU's scores take torch.topk)
    "sampling": (dict(do_sample=True, top_k=10, seed=0), 1 + 1, 0),
    "beam": (dict(num_beams=3), 1, 1),  # the rows-done test
    # verify loop: the probe (running rows, tokens left) + all_finished; the draft: what it has not seen
    "speculative": (dict(assistant_model="draft", num_assistant_tokens=3, assistant_confidence_threshold=0),
                    3, 1 + 1),  # the target's truncate, the draft's
    # rows that accepted different counts: the draft's re-read rollback adds its truncate (docs/DESIGN.md 6)
    "speculative_ragged": (dict(assistant_model="noisy", num_assistant_tokens=3, assistant_confidence_threshold=0),
                           3, 1 + 1 + 1),
    # one row on a CPU (decoding/strategies/speculative_row.py): a numpy view of each library call's
    # logits (k draft steps, the verify), read for their argmax; no sync on a CPU, the only device it
    # runs on. The rollbacks are host ints (a truncate of one row by an int reads nothing)
    "speculative_one_row": (dict(rows=ROWS[:1], assistant_model="draft", num_assistant_tokens=3,
                                 assistant_confidence_threshold=0), 3 + 1, 0),
    # prompt lookup, one row on a CPU: the verify's logits as numpy (the n-gram search reads the row's numpy view)
    "prompt_lookup_one_row": (dict(rows=ROWS[:1], prompt_lookup_num_tokens=3), 1, 0),
    # + the n-gram search: text length, guess length, all rows valid
    "prompt_lookup": (dict(prompt_lookup_num_tokens=3), 5, 1),
    "jacobi": (dict(strategy="jacobi", block_size=3), 2, 1),
    "gs_jacobi": (dict(strategy="gs_jacobi", block_size=3), 4, 1),  # + the block's rest, all rows valid
    "sjd": (dict(strategy="sjd", do_sample=True, block_size=3, seed=0), 2 + 1, 1),  # + top-k's selection
    "blockwise": (dict(strategy="blockwise", block_size=3), 2, 1),
    # one row on a CPU: the numpy views of each head's logits (3) and of the verify's
    "blockwise_one_row": (dict(rows=ROWS[:1], strategy="blockwise", block_size=3), 3 + 1, 0),
    # a YOCO target (its ring of recent keys: finished rows masked, a floor on rollback)
    "speculative_yoco": (dict(target="yoco", assistant_model="draft", num_assistant_tokens=3,
                              assistant_confidence_threshold=0), 3, 1 + 1),
    "jacobi_yoco": (dict(target="yoco", strategy="jacobi", block_size=3), 2, 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_host_reads_per_round(name):
    kw, in_decoding, in_models = CASES[name]
    kw = dict(kw)
    target = yoco() if kw.pop("target", None) == "yoco" else model()
    if kw.get("assistant_model") == "draft":
        kw["assistant_model"] = model(seed=1, dim=16)
    elif kw.get("assistant_model") == "noisy":  # the target plus noise: rows accept some guesses, not all
        draft = model()
        with torch.no_grad():
            for p in draft.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        kw["assistant_model"] = draft
    if name.startswith("blockwise"):
        kw["heads"] = BlockwiseHeads(32, 3, config=HeadsConfig.for_target(target, 3))
    assert per_round(target, **kw) == (in_decoding, in_models)


def test_the_counter_sees_a_read():
    reads = HostReads()
    with reads:
        decoding.generate(model(), ROWS, max_new_tokens=2, eos_token_id=None)
    assert sum(reads.rounds[0].values()) > 0

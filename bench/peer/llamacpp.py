"""llama.cpp as a peer: write the native model as an fp32 GGUF and greedy-decode it through
llama-cpp-python's low-level API (one batch with a sequence id per row, so batch 8 runs as one
llama.cpp batch of 8 sequences, not 8 calls).

Why the q/k rows move: the native model (like HF) applies RoPE to the two halves of each head
(rotate_half), llama.cpp's `llama` architecture to adjacent pairs. Interleaving each head's rows,
i, i + d/2 -> 2i, 2i + 1, makes q.k identical under llama.cpp's rotation.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from .vocab import Vocab


def pairs_adjacent(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * d, in) rows per head from [first half | second half] to interleaved pairs."""
    out, inp = w.shape
    d = out // n_heads
    return w.reshape(n_heads, 2, d // 2, inp).transpose(1, 2).reshape(out, inp)


def write_gguf(model, path: str | Path, vocab: Vocab) -> Path:
    """An fp32 GGUF (architecture `llama`) with exactly the weights of the native `model`."""
    import gguf
    cfg = model.config
    if cfg.qkv_bias or cfg.sliding_window or (cfg.layer_windows and any(cfg.layer_windows)):
        raise ValueError("GGUF export covers plain Llama: no qkv bias, no sliding window")
    if len(vocab) != cfg.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} pieces, the model {cfg.vocab_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("decoding-bench")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.pieces)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_unk_token_id(vocab.unk_id)
    w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    w.add_pad_token_id(vocab.pad_id)
    w.add_add_bos_token(False)

    def put(name, t):
        w.add_tensor(name, t.detach().float().contiguous().numpy())

    put("token_embd.weight", model.embed.weight)
    put("output_norm.weight", model.norm.weight)
    put("output.weight", model.lm_head.weight)  # written even when tied: no fallback to rely on
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for i, layer in enumerate(model.layers):
        wq, wk, wv = layer.attn.wqkv.weight.split([q, kv, kv])
        gate, up = layer.mlp.w13.weight.chunk(2)
        put(f"blk.{i}.attn_norm.weight", layer.attn_norm.weight)
        put(f"blk.{i}.attn_q.weight", pairs_adjacent(wq, cfg.n_heads))
        put(f"blk.{i}.attn_k.weight", pairs_adjacent(wk, cfg.n_kv_heads))
        put(f"blk.{i}.attn_v.weight", wv)
        put(f"blk.{i}.attn_output.weight", layer.attn.wo.weight)
        put(f"blk.{i}.ffn_norm.weight", layer.mlp_norm.weight)
        put(f"blk.{i}.ffn_gate.weight", gate)
        put(f"blk.{i}.ffn_up.weight", up)
        put(f"blk.{i}.ffn_down.weight", layer.mlp.w2.weight)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_QUIET = None


def _silence(L):
    """llama.cpp logs every load to stderr; keep warnings and errors only."""
    global _QUIET
    if _QUIET is None:
        @L.llama_log_callback
        def quiet(level, text, _):
            if level in (3, 4):  # GGML_LOG_LEVEL_WARN, _ERROR
                print(text.decode(errors="replace"), end="")
        _QUIET = quiet
        L.llama_log_set(_QUIET, ctypes.c_void_p())


class LlamaCpp:
    """Greedy decoding of a GGUF on CPU, fp32, flash attention off, `threads` threads."""

    def __init__(self, path: str | Path, threads: int = 1):
        import llama_cpp as L
        self.L, self.threads = L, threads
        _silence(L)
        L.llama_backend_init()
        params = L.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.contexts = {}  # (rows, cells per row) -> (context, batch)

    def _context(self, rows: int, tokens_per_row: int, batch_tokens: int):
        L = self.L
        key = (rows, tokens_per_row)
        if key not in self.contexts:
            p = L.llama_context_default_params()
            p.n_seq_max = rows
            p.kv_unified = False  # one KV stream per sequence: a row attends only to its own cells
            p.n_ctx = rows * 256 * -(-tokens_per_row // 256)
            p.n_batch = p.n_ubatch = max(batch_tokens, 512)
            p.n_threads = p.n_threads_batch = self.threads
            p.type_k = p.type_v = L.GGML_TYPE_F32  # fp32 end to end (the default cache is f16)
            p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # near-tied logits flipped with it on
            p.no_perf = True
            ctx = L.llama_init_from_model(self.model, p)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context for {rows} sequences")
            self.contexts[key] = (ctx, L.llama_batch_init(max(batch_tokens, rows), 0, rows))
        return self.contexts[key]

    def greedy(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """(B, T) prompt ids -> (B, new_tokens) greedy continuations, eos ignored."""
        L = self.L
        B, T = ids.shape
        ctx, batch = self._context(B, T + new_tokens, B * T)
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        rows = ids.tolist()
        feed = [(b, j, t, j == T - 1) for b in range(B) for j, t in enumerate(rows[b])]  # whole prompts at once
        out = np.empty((B, new_tokens), dtype=np.int64)
        for step in range(new_tokens):
            batch.n_tokens = len(feed)
            for i, (b, pos, tok, want) in enumerate(feed):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, want
                batch.seq_id[i][0] = b
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            heads = [i for i, f in enumerate(feed) if f[3]]  # the batch index of each row's newest token
            for b, i in enumerate(heads):
                logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,))
                out[b, step] = int(logits.argmax())
            feed = [(b, T + step, int(out[b, step]), True) for b in range(B)]
        return torch.from_numpy(out)

    def close(self):
        for ctx, batch in self.contexts.values():
            self.L.llama_batch_free(batch)
            self.L.llama_free(ctx)
        self.contexts = {}
        if self.model:
            self.L.llama_model_free(self.model)
            self.model = None

"""Greedy speculative decoding is token-identical to the target's greedy output (HF generate on the
same weights is the oracle): HF families through the adapter, native models, mixed pairs, batch 1
and left-padded batch 4 with eos mid-round, prompt lookup, the heuristic schedule and a padded
draft vocabulary. Drafts are noisy copies of the target, so rounds accept some guesses, not all."""
import pytest
import torch

import decoding
from hf_tiny import hf_greedy, left_pad, mid_eos, tiny
from models.hf_weights import from_hf

ROWS = [[5, 17, 23, 8, 41, 9, 77, 3, 12, 60, 33, 7], [11, 4, 90, 2], [6, 55, 21, 19, 30, 44, 70], [8, 8, 31]]
N = 16
NOISE = {"llama": 0.01, "qwen2": 0.01, "gpt2": 0.03, "mistral": 0.01}  # draft agreement ~0.5-0.8
EXACT = dict(assistant_confidence_threshold=0)  # exactly k guesses a round


def noisy_copy(model, family, noise, **overrides):
    """A draft: the target's weights plus noise (extra vocabulary rows stay random)."""
    draft = tiny(family, seed=1, **overrides)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for pd, pt in zip(draft.parameters(), model.parameters()):
            n = [slice(0, s) for s in pt.shape]
            pd[tuple(n)] = pt + noise * torch.randn(pt.shape, generator=g)
    return draft


@pytest.fixture(scope="module", params=list(NOISE))
def pair(request):
    family = request.param
    target = tiny(family)
    return family, target, noisy_copy(target, family, NOISE[family])


def test_batch_greedy_equals_target_greedy(pair):
    family, target, draft = pair
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf_greedy(target, ids, mask, N, eos_token_id=None), ids.shape[1])
    ref = hf_greedy(target, ids, mask, N, eos_token_id=eos)
    out = decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=3,
                            max_new_tokens=N, eos_token_id=eos, **EXACT)
    assert torch.equal(out.sequences, ref), family
    s = out.stats
    assert (ref[:, ids.shape[1]:] == eos).any(1).sum() >= 1
    assert 0 < s.accept_rate_by_position[0] < 1 and s.target_forwards < N and s.tau > 1
    assert 0 < s.draft_forwards <= 3 * s.target_forwards


@pytest.mark.parametrize("min_new", [4, 9])
def test_min_new_tokens_like_hf(min_new):
    """min_new_tokens keeps an eos the target emits early out of every row's first min_new tokens:
    the rounds cross that line mid-block and rows cross it at different rounds (the processors then
    take the per-position path; before and after it, the host bounds on emitted decide)."""
    target = tiny("llama")
    draft = noisy_copy(target, "llama", NOISE["llama"])
    ids, mask = left_pad(ROWS)
    free = hf_greedy(target, ids, mask, N, eos_token_id=None)[:, ids.shape[1]:]
    eos = int(free[0, 1])  # row 0's second token
    ref = hf_greedy(target, ids, mask, N, eos_token_id=eos, min_new_tokens=min_new)
    out = decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=3,
                            max_new_tokens=N, eos_token_id=eos, min_new_tokens=min_new, **EXACT)
    assert torch.equal(out.sequences, ref)
    assert not torch.equal(ref, hf_greedy(target, ids, mask, N, eos_token_id=eos)), "min_new_tokens must matter"


def test_rows_alone_equal_the_batch():
    target = tiny("llama")
    draft = noisy_copy(target, "llama", NOISE["llama"])
    ids, mask = left_pad(ROWS)
    batch = decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=4,
                              max_new_tokens=N, eos_token_id=None, **EXACT).sequences[:, ids.shape[1]:]
    for b, row in enumerate(ROWS):
        alone = decoding.generate(target, [row], assistant_model=draft, num_assistant_tokens=4, max_new_tokens=N,
                                  eos_token_id=None, **EXACT).sequences[0, len(row):]
        assert torch.equal(alone, batch[b]), b


@pytest.mark.parametrize("rows", [ROWS[:1], ROWS], ids=["batch1", "batch4-padded"])
def test_native_target_and_draft(rows):
    hf_target = tiny("llama")
    target, draft = from_hf(hf_target), from_hf(noisy_copy(hf_target, "llama", NOISE["llama"]))
    ids, mask = left_pad(rows)
    ref = hf_greedy(hf_target, ids, mask, N, eos_token_id=None)
    for a, t in ((draft, target), (draft, hf_target), (hf_target, target)):  # native, mixed pairs
        out = decoding.generate(t, ids, attention_mask=mask, assistant_model=a, num_assistant_tokens=3,
                                max_new_tokens=N, eos_token_id=None, **EXACT)
        assert torch.equal(out.sequences, ref)


def test_draft_equal_to_target_accepts_everything():
    target = tiny("qwen2")
    ids, mask = left_pad(ROWS)
    out = decoding.generate(target, ids, attention_mask=mask, assistant_model=target, num_assistant_tokens=3,
                            max_new_tokens=N, eos_token_id=None, **EXACT)
    assert torch.equal(out.sequences, hf_greedy(target, ids, mask, N, eos_token_id=None))
    s = out.stats
    assert s.accept_rate_by_position == [1.0, 1.0, 1.0] and s.target_forwards == N // 4 and s.tau == 4.0


def test_prompt_lookup_equals_greedy():
    target = tiny("gpt2")
    rows = [[5, 17, 23, 8, 5, 17, 23, 8, 5, 17], [11, 4, 90, 11, 4], [6, 55, 6, 55, 6, 55, 6]]
    ids, mask = left_pad(rows)
    ref = hf_greedy(target, ids, mask, N, eos_token_id=None)
    out = decoding.generate(target, ids, attention_mask=mask, prompt_lookup_num_tokens=4, max_new_tokens=N,
                            eos_token_id=None)
    assert torch.equal(out.sequences, ref)
    assert out.stats.draft_forwards == 0 and out.stats.tau > 1


def test_heuristic_schedule_scores_and_padded_vocabulary():
    """A draft with 4 padding ids more than the target (scored on the common range), the heuristic
    schedule, and output_scores equal to HF's per-step scores."""
    target = tiny("llama")
    draft = noisy_copy(target, "llama", NOISE["llama"], vocab_size=100)
    ids, mask = left_pad(ROWS[:2])
    with torch.no_grad():
        ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N, eos_token_id=None,
                              output_scores=True, return_dict_in_generate=True, repetition_penalty=1.2)
    out = decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=2,
                            num_assistant_tokens_schedule="heuristic", max_new_tokens=N, eos_token_id=None,
                            output_scores=True, repetition_penalty=1.2, **EXACT)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == N
    for ours, theirs in zip(out.scores, ref.scores):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert len(out.stats.accept_rate_by_position) > 2  # k grew after full acceptances


# -- stop strings and the caller's processors, on a character-level tokenizer ---------------------
def char_tokenizer():
    import string

    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    chars = ["<pad>", "<s>", "</s>", "\n", " "] + list(string.ascii_lowercase + string.ascii_uppercase
                                                    + string.digits + string.punctuation[:29])
    tk = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")


@pytest.mark.parametrize("mode", ["draft", "lookup"])
def test_stop_strings_and_length_dependent_processor_like_hf(mode):
    """A processor that forces text at fixed steps (it reads input_ids' width, so each draft position
    must see HF's width for its row) writes a stop string that ends inside a round."""
    import transformers
    tok = char_tokenizer()
    target = tiny("llama")
    rows = [tok.encode(text, add_special_tokens=False) for text in ("def f(x):\n  return x", "q = 2")]
    ids, mask = left_pad(rows)
    forced = {2 + i: c for i, c in enumerate("\ndef g")}

    def force(input_ids, scores):
        step = input_ids.shape[1] - ids.shape[1]
        if step in forced:
            scores = torch.full_like(scores, -1e9)
            scores[:, tok.convert_tokens_to_ids(forced[step])] = 0
        return scores

    kw = dict(max_new_tokens=12, eos_token_id=None, stop_strings=["\ndef"], tokenizer=tok)
    ref = hf_greedy(target, ids, mask, logits_processor=transformers.LogitsProcessorList([force]), **kw)
    extra = dict(assistant_model=target, num_assistant_tokens=4, **EXACT) if mode == "draft" else \
        dict(prompt_lookup_num_tokens=3)
    out = decoding.generate(target, ids, attention_mask=mask, logits_processor=[force], **kw, **extra)
    assert torch.equal(out.sequences, ref), (tok.decode(out.sequences[0]), tok.decode(ref[0]))
    assert tok.decode(out.sequences[0, ids.shape[1]:]).endswith("\ndef")


def yoco_pair():
    """A random YOCO target (window 8, max_rollback 5) and a draft: the same weights plus noise."""
    from models.yoco import YOCOConfig, YOCODecoder
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m = YOCODecoder(YOCOConfig(vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, window=8,
                                   max_rollback=5, max_seq_len=128)).eval()
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.3)
        models.append(m)
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(0.02 * torch.randn_like(p))
    return models


def test_yoco_target_rolls_back_within_its_window_ring():
    """YOCO's cache keeps max_rollback tokens of slack in its sliding-window ring: speculative
    rounds roll back inside it (k = max_rollback) and match YOCO's greedy output (no HF oracle
    exists for YOCO; its greedy path is checked against a full forward elsewhere)."""
    target, draft = yoco_pair()
    ids, mask = left_pad([[5, 17, 23, 8, 41, 9, 7, 3, 12], [11, 4, 9, 2], [6, 55, 21, 19, 30]])
    ref = decoding.generate(target, ids, attention_mask=mask, max_new_tokens=24, eos_token_id=None).sequences
    out = decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=5,
                            max_new_tokens=24, eos_token_id=None, **EXACT)
    assert torch.equal(out.sequences, ref) and out.stats.tau > 1
    with pytest.raises(ValueError, match="`num_assistant_tokens=6` exceeds max_rollback=5"):
        decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=6)


def test_native_draft_steps_need_no_mask_once_rows_are_ragged():
    """Batch 4, native target and draft, rows accepting different numbers of guesses: after the
    left-padded prompt, every draft step that runs while all rows run takes no attention mask (rows
    that missed fewer tokens re-read their last ones), so it can run the fixed-shape (compiled) step;
    the output stays HF's greedy."""
    hf_target = tiny("llama")
    target, draft = from_hf(hf_target), from_hf(noisy_copy(hf_target, "llama", 0.05))
    ids, mask = left_pad(ROWS)
    ref = hf_greedy(hf_target, ids, mask, N, eos_token_id=None)
    masks = []
    forward = draft.forward

    def recording(input_ids, cache, **kw):
        masks.append(kw.get("attention_mask"))
        return forward(input_ids, cache, **kw)
    draft.forward = recording
    out = decoding.generate(target, ids, attention_mask=mask, assistant_model=draft, num_assistant_tokens=3,
                            max_new_tokens=N, eos_token_id=None, **EXACT)
    assert torch.equal(out.sequences, ref)
    assert masks[0] is not None  # the left-padded prompt
    assert all(m is None for m in masks[1:])  # no row finishes before the last round (eos off)
    accepted = out.stats.accept_rate_by_position
    assert 0 < accepted[0] < 1 and accepted[-1] < 1  # some rows rejected early, some took more: ragged


@pytest.mark.parametrize("method", ["draft", "prompt_lookup"])
def test_native_steps_stay_mask_free_when_rows_finish_at_different_rounds(method):
    """Batch 4, native models, an eos that ends rows at different rounds: finished rows run on
    unmasked and are rolled back whole, so every step after the left-padded prompt, target's and
    draft's, takes no attention mask (the compiled step's shape) and the output stays HF's greedy."""
    hf_target = tiny("llama")
    target, draft = from_hf(hf_target), from_hf(noisy_copy(hf_target, "llama", 0.05))
    ids, mask = left_pad(ROWS)
    eos = mid_eos(hf_greedy(hf_target, ids, mask, N, eos_token_id=None), ids.shape[1])
    ref = hf_greedy(hf_target, ids, mask, N, eos_token_id=eos)
    ended = (ref[:, ids.shape[1]:] == eos).any(1)
    assert ended.any() and not ended.all(), "the eos must end some rows early, not all"
    masks = {"target": [], "draft": []}
    for name, m in (("target", target), ("draft", draft)):
        def recording(input_ids, cache, _f=m.forward, _log=masks[name], **kw):
            _log.append(kw.get("attention_mask"))
            return _f(input_ids, cache, **kw)
        m.forward = recording
    kw = dict(assistant_model=draft, num_assistant_tokens=3, **EXACT) if method == "draft" else \
        dict(prompt_lookup_num_tokens=3)
    out = decoding.generate(target, ids, attention_mask=mask, max_new_tokens=N, eos_token_id=eos, **kw)
    assert torch.equal(out.sequences, ref)
    for name, log in masks.items():
        if name == "draft" and method != "draft":
            assert not log
            continue
        assert log[0] is not None and all(m is None for m in log[1:]), name
    assert out.stats.target_forwards > 2


def _successor_model(succ: list[int], dim: int):
    """A native Llama whose greedy next token is succ[token]: attention and MLP add nothing (zero
    weights), the embedding is one-hot and the LM head a lookup table."""
    from models import DecoderConfig, LlamaDecoder
    m = LlamaDecoder(DecoderConfig(vocab_size=len(succ), dim=dim, n_layers=1, n_heads=4, n_kv_heads=1,
                                   max_seq_len=512)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embed.weight.copy_(torch.eye(len(succ), dim))
        for norm in (m.norm, m.layers[0].attn_norm, m.layers[0].mlp_norm):
            norm.weight.fill_(1.0)
        head = torch.zeros(len(succ), dim)
        head[succ, torch.arange(len(succ))] = 10.0  # logit of succ[i] from the one-hot of i
        m.lm_head.weight.copy_(head)
    return m


def test_finished_rows_fit_the_draft_cache_while_others_lag():
    """Rows reach max_new_tokens in successive rounds in which the draft cannot run, the longest prompt's
    row first; then a lagging row drafts k tokens again. Finished rows fed unmasked would write W + k - 1
    tokens past their length and overflow the draft's cache: such a round masks them. Token-identical
    to greedy (chains of successors: the target's exact, the draft's wrong at a few places per row)."""
    M, k, L = 20, 4, 22
    wrong = [set(), {18}, {13, 17}, {12, 16}, {11, 15}, {0, 1, 2}]
    V = 2 + len(wrong) * L
    target_succ, draft_succ, rows = [1] * V, [1] * V, []
    for r, bad in enumerate(wrong):
        base = 2 + r * L
        for i in range(L - 1):
            target_succ[base + i] = base + i + 1
            draft_succ[base + i] = 1 if i in bad else base + i + 1
        rows.append([1, 1, base] if r == 0 else [base])  # row 0: the longest prompt
    dim = V + (-V) % 4
    target, draft = _successor_model(target_succ, dim), _successor_model(draft_succ, dim)
    greedy = decoding.generate(target, rows, max_new_tokens=M, eos_token_id=None, pad_token_id=0).sequences
    assert greedy[:, 3:].tolist() == [list(range(r[-1] + 1, r[-1] + 1 + M)) for r in rows]
    out = decoding.generate(target, rows, max_new_tokens=M, eos_token_id=None, pad_token_id=0,
                            assistant_model=draft, num_assistant_tokens=k, **EXACT)
    assert torch.equal(out.sequences, greedy)
    assert out.stats.tau > 1

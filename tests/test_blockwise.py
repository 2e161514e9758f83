"""Blockwise parallel decoding (Stern et al.) on a tiny random native model with random independent
heads and with briefly fitted hydra heads (the oracle is greedy decoding of the same model, itself checked against HF): exact acceptance is
token-identical to greedy, batched with left padding, eos inside a block and processors; rows run
alone equal the batch; top-k acceptance emits only tokens within the target's top-k at their
position, checked against a cache-free recomputed forward."""
import pytest
import torch

import decoding
from models import DecoderConfig, LlamaDecoder
from models.heads import HeadsConfig, build_heads

torch.set_num_threads(1)
ROWS = [[5, 9, 3, 17, 22, 8, 4], [11, 30], [7, 7, 40, 2, 19], [8, 8, 31]]
N = 24
COMMON = dict(max_new_tokens=N, pad_token_id=0)


def tiny():
    """Weights N(0, 0.3): repetitive enough that random heads get whole blocks accepted sometimes
    (accept rates about [0.3, 0.2, 0.2, 0.2]) and rejected often."""
    torch.manual_seed(1)
    m = LlamaDecoder(DecoderConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def random_heads(model, k=4, noise=0.05, seed=1, kind="independent"):
    h = build_heads(HeadsConfig.for_target(model, k, kind=kind))
    with torch.no_grad():
        h.w2.copy_(noise * torch.randn(h.w2.shape, generator=torch.Generator().manual_seed(seed)))
    return h


def fitted_hydra(model, k=4, steps=150):
    """Hydra heads fitted briefly to the model's own greedy text, so that whole blocks get accepted
    (random hydra heads mostly guess the previous token again)."""
    from models.training.train_heads import greedy_continue, head_window, window_loss
    torch.manual_seed(0)
    h = build_heads(HeadsConfig.for_target(model, k, hidden=64, kind="hydra"))
    seq = greedy_continue(model, torch.randint(4, 64, (32, 4)), 40)
    with torch.no_grad():
        hidden = model.hidden_train(seq)[:, 3:-1]
    window = head_window(seq, 3, k)
    opt = torch.optim.Adam(h.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        window_loss(model, h, hidden, window).backward()
        opt.step()
    return h.requires_grad_(False)


@pytest.fixture(scope="module", params=["independent", "hydra"])
def pair(request):
    m = tiny()
    return m, random_heads(m) if request.param == "independent" else fitted_hydra(m)


def mid_eos(seqs, T):
    """A token greedy emits mid-sequence in some row but not as any row's first new token."""
    new = seqs[:, T:]
    for step in range(4, N - 4):
        for row in new.tolist():
            if row[step] not in new[:, 0].tolist() and row[step] not in row[:step]:
                return row[step]
    pytest.skip("no token suitable as a mid-sequence eos")


def test_exact_equals_greedy_batched_with_eos_mid_block(pair):
    m, h = pair
    T = max(map(len, ROWS))
    eos = mid_eos(decoding.generate(m, ROWS, eos_token_id=None, **COMMON).sequences, T)
    ref = decoding.generate(m, ROWS, eos_token_id=eos, **COMMON)
    out = decoding.generate(m, ROWS, strategy="blockwise", heads=h, eos_token_id=eos, **COMMON)
    assert torch.equal(out.sequences, ref.sequences)
    assert (ref.sequences[:, T:] == eos).any(1).sum() >= 1
    s = out.stats
    rates = s.accept_rate_by_position
    assert len(rates) == 4 and 0 < rates[0] < 1 and rates[-1] > 0, rates  # rejections and whole blocks
    # a batch waits for its slowest row, so it may need as many forwards as greedy; tau is per row
    assert s.new_tokens == ref.stats.new_tokens and s.target_forwards <= ref.stats.target_forwards
    assert s.tau > 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_block_size_equals_greedy(pair, k):
    m, h = pair
    ref = decoding.generate(m, ROWS, eos_token_id=None, **COMMON).sequences
    out = decoding.generate(m, ROWS, strategy="blockwise", heads=h, block_size=k, eos_token_id=None, **COMMON)
    assert torch.equal(out.sequences, ref)
    assert len(out.stats.accept_rate_by_position) == k


def no_immediate_repeat(ids, scores):
    """An HF-style processor that reads input_ids: the last token may not come again."""
    return scores.scatter(1, ids[:, -1:], float("-inf"))


def test_exact_with_processors(pair):
    m, h = pair
    kw = dict(repetition_penalty=1.4, min_new_tokens=6, eos_token_id=[7, 12], logits_processor=[no_immediate_repeat],
              **COMMON)
    ref = decoding.generate(m, ROWS, **kw)
    out = decoding.generate(m, ROWS, strategy="blockwise", heads=h, output_scores=True, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.stats.target_forwards < ref.stats.target_forwards


def test_rows_alone_equal_the_batch(pair):
    m, h = pair
    T = max(map(len, ROWS))
    eos = mid_eos(decoding.generate(m, ROWS, eos_token_id=None, **COMMON).sequences, T)
    batch = decoding.generate(m, ROWS, strategy="blockwise", heads=h, eos_token_id=eos, **COMMON).sequences
    for i, row in enumerate(ROWS):
        alone = decoding.generate(m, [row], strategy="blockwise", heads=h, eos_token_id=eos, **COMMON).sequences[0]
        got = batch[i, T - len(row):][:alone.shape[0]]
        assert torch.equal(got, alone), i
        assert (batch[i, T - len(row) + alone.shape[0]:] == 0).all()  # pads after the row stopped


def test_topk_emits_only_tokens_within_the_target_topk(pair):
    m, h = pair
    top = 3
    greedy = decoding.generate(m, ROWS, eos_token_id=None, **COMMON).sequences
    out = decoding.generate(m, ROWS, strategy="blockwise", heads=h, acceptance="topk", acceptance_top_k=top,
                            eos_token_id=None, **COMMON)
    T = max(map(len, ROWS))
    seqs = out.sequences
    assert seqs.shape == greedy.shape and not torch.equal(seqs, greedy)  # the lossy mode took other tokens
    off_argmax = 0
    for i, row in enumerate(ROWS):
        seq = torch.cat([torch.tensor(row), seqs[i, T:]])[None]  # the row without pads
        with torch.no_grad():
            logits = m.forward_train(seq)[0]  # (L, V) cache-free: the oracle
        for p in range(len(row), seq.shape[1]):
            scores, tok = logits[p - 1], seq[0, p]
            kth = scores.topk(top).values[-1]
            assert scores[tok] >= kth - 1e-5, (i, p)
            off_argmax += int(scores[tok] < scores.max())
        assert seq[0, len(row)] == greedy[i, T]  # round 1 has no proposals: the first token is greedy's
    assert off_argmax > 0


def test_topk_one_is_exact(pair):
    m, h = pair
    ref = decoding.generate(m, ROWS, eos_token_id=None, **COMMON).sequences
    out = decoding.generate(m, ROWS, strategy="blockwise", heads=h, acceptance="topk", acceptance_top_k=1,
                            eos_token_id=None, **COMMON)
    assert torch.equal(out.sequences, ref)  # top-1 = the argmax (no ties in fp32 logits here)


def test_each_round_proposes_the_heads_on_the_hidden_state_that_chose_the_pending_token(pair):
    """One forward per round, no proposal forward: round r's proposals are heads 1..k on the hidden
    state (recomputed here without a cache) at the position that predicted the token fed first."""
    from decoding.verify import tracing
    m, h = pair
    row = ROWS[0]
    with tracing() as rounds:
        out = decoding.generate(m, [row], strategy="blockwise", heads=h, eos_token_id=None, **COMMON)
    assert len(rounds) == out.stats.target_forwards and rounds[0].draft.shape[1] == 0  # round 1 = prefill
    seq = out.sequences
    with torch.no_grad():
        hidden = m.hidden_train(seq)[0]  # (L, dim)

        def guesses(at):  # heads' argmax guesses from the hidden state at `at` (hydra: after seq[at + 1])
            return h.propose(hidden[at:at + 1], seq[0, at + 1:at + 2], m, lambda j, logits, g: logits.argmax(-1))[0]
        done = int(rounds[0].kept[0])
        for rnd in rounds[1:]:
            K = rnd.draft.shape[1]
            at = len(row) + done - 2  # the position whose argmax is the pending token
            assert rnd.draft[0].tolist() == guesses(at)[:K].tolist()
            done += int(rnd.kept[0])
    assert done == N

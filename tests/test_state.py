"""DecodeState's multi-token appends (what speculative / Jacobi / blockwise strategies build on),
checked against hand-worked layouts."""
import torch

from decoding.state import DecodeState
from decoding.stopping import StopStrings


class CharTokenizer:
    """One character per id (id 0 = pad, decodes to nothing)."""
    chars = "\0abcdefghijklmnopqrstuvwxyz\n "

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i)


TOK = CharTokenizer()


def ids(text):
    return TOK.encode(text)


def test_block_cut_at_eos_and_max_new_tokens():
    st = DecodeState(torch.tensor([[1, 2], [3, 4], [5, 6]]), None, max_new_tokens=5, eos_token_id=[9],
                     pad_token_id=0)
    kept = st.append(torch.tensor([[1, 2, 9, 4], [5, 6, 7, 8], [9, 1, 1, 1]]), torch.tensor([4, 2, 4]))
    assert kept.tolist() == [3, 2, 1] and st.finished.tolist() == [True, False, True]
    kept = st.append(torch.tensor([[1, 1, 1, 1], [3, 4, 5, 6], [1, 1, 1, 1]]), torch.tensor([4, 4, 4]))
    assert kept.tolist() == [0, 3, 0] and st.all_finished()  # row 1 reached 5 new tokens
    assert st.output_sequences().tolist() == [[1, 2, 1, 2, 9, 0, 0], [3, 4, 5, 6, 3, 4, 5], [5, 6, 9, 0, 0, 0, 0]]
    assert st.stats().new_tokens == 9


def test_block_cut_at_stop_string_spanning_the_prompt():
    prompt = torch.tensor([[0] + ids("xc"), ids("abc")])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    st = DecodeState(prompt, mask, max_new_tokens=8, eos_token_id=None, pad_token_id=0,
                     stop=StopStrings(["cd", "zz"], TOK))
    kept = st.append(torch.tensor([ids("dzzz"), ids("zyzz")]), torch.tensor([4, 4]))
    assert kept.tolist() == [1, 4] and st.finished.tolist() == [True, True]  # "c|d", then "zy|zz"
    assert TOK.decode(st.output_sequences()[1, 3:].tolist()) == "zyzz"


def test_lockstep_pads_finished_rows_and_streams():
    puts = []

    class Streamer:
        def put(self, v):
            puts.append(v.tolist())

        def end(self):
            pass

    st = DecodeState(torch.tensor([[1, 2], [3, 4]]), None, max_new_tokens=3, eos_token_id=[9], pad_token_id=0,
                     streamer=Streamer())
    fed = st.append_one(torch.tensor([9, 5]))
    fed = st.append_one(torch.tensor([7, 6]))
    assert fed.tolist() == [0, 6] and not st.all_finished()
    st.append_one(torch.tensor([7, 8]))
    assert st.all_finished() and st.output_sequences().tolist() == [[1, 2, 9, 0, 0], [3, 4, 5, 6, 8]]
    assert puts == [[[1, 2], [3, 4]], [9, 5], [0, 6], [0, 8]]


def test_without_eos_finished_rows_keep_their_tokens_as_hf():
    st = DecodeState(torch.tensor([ids("ab"), ids("cd")]), None, max_new_tokens=3, eos_token_id=None,
                     pad_token_id=0, stop=StopStrings(["x"], TOK))
    st.append_one(torch.tensor(ids("xy")))
    st.append_one(torch.tensor(ids("zz")))
    assert st.finished.tolist() == [True, False]
    assert TOK.decode(st.output_sequences()[0].tolist()) == "abxz"  # HF writes on, no pad without eos


def test_acceptance_statistics():
    st = DecodeState(torch.tensor([[1], [2]]), None, max_new_tokens=10, eos_token_id=None, pad_token_id=0)
    st.count_forward()
    st.count_acceptance(torch.tensor([2, 0]), 3)
    st.append(torch.tensor([[4, 4, 4], [5, 0, 0]]), torch.tensor([3, 1]))
    s = st.stats()
    assert s.accept_rate_by_position == [0.5, 0.5, 0.0] and s.new_tokens == 4 and s.tau == 2.0

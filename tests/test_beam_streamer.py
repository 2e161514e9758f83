"""Beam streaming: put_hypotheses(row, token_ids, first_changed) after every step, HF's put/end around
it, and BeamTextStreamer's screen ending on the returned best hypothesis."""
import io

import pytest
import torch

import decoding
from decoding.beam_streamer import BeamTextStreamer
from hf_tiny import left_pad, tiny

ROWS = [[5, 17, 23, 8, 41, 9], [11, 4, 90, 2]]


@pytest.fixture(scope="module")
def hf():
    return tiny("llama")


class Recorder:
    def __init__(self):
        self.puts, self.hyps, self.ended = [], {}, 0

    def put(self, value):
        self.puts.append(value.clone())

    def put_hypotheses(self, row, token_ids, first_changed):
        prev = self.hyps.setdefault(row, [[]])[-1]
        assert token_ids[:first_changed] == prev[:first_changed]
        assert first_changed == min(len(prev), len(token_ids)) or token_ids[first_changed] != prev[first_changed]
        self.hyps[row].append(list(token_ids))

    def end(self):
        self.ended += 1


def test_best_hypothesis_of_every_row_each_step(hf):
    ids, mask = left_pad(ROWS)
    rec = Recorder()
    out = decoding.generate(hf, ids, attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2,
                            eos_token_id=None, streamer=rec)
    assert torch.equal(rec.puts[0], ids) and rec.ended == 1
    steps = out.stats.target_forwards
    for row in range(2):
        history = rec.hyps[row][1:]
        assert len(history) == steps + 1  # one call per step, one with the answer
        assert [len(h) for h in history[:steps]] == list(range(1, steps + 1))
        assert history[-1] == out.sequences[2 * row, ids.shape[1]:].tolist()  # the returned best
    assert torch.equal(rec.puts[-1], out.sequences[::2, ids.shape[1]:])  # HF's put: the answers, once


def test_streamer_without_put_hypotheses_gets_the_answer_once(hf):
    rec = Recorder()
    rec.put_hypotheses = None
    out = decoding.generate(hf, [ROWS[0]], max_new_tokens=5, num_beams=2, eos_token_id=None, streamer=rec)
    assert len(rec.puts) == 2 and torch.equal(rec.puts[1], out.sequences[0, len(ROWS[0]):]) and rec.ended == 1


class Letters:
    """A tokenizer whose token i decodes to one letter."""
    def decode(self, ids, **kw):
        return "".join(chr(ord("A") + i % 26) if i % 7 else "\n" for i in ids)


def screen(raw: str) -> str:
    """What a terminal shows after backspaces (a rewrite after a line break restarts the text)."""
    out = []
    for ch in raw:
        if ch == "\b":
            out.pop()  # a terminal moves left; the next character overwrites
        else:
            out.append(ch)
    return "".join(out)


def test_beam_text_streamer_ends_on_the_answer(hf):
    stream = io.StringIO()
    streamer = BeamTextStreamer(Letters(), stream=stream)
    out = decoding.generate(hf, [ROWS[0]], max_new_tokens=10, num_beams=4, length_penalty=-1.0, streamer=streamer)
    answer = Letters().decode(out.sequences[0, len(ROWS[0]):].tolist())
    shown = screen(stream.getvalue())
    assert shown.endswith(answer + "\n")
    if "\n" not in answer:
        assert shown.split("\n")[-2] == answer

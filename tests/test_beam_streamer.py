"""Beam streaming: put_hypotheses(row, token_ids, first_changed) after every step, HF's put/end around
it, and BeamTextStreamer's screen ending on the returned best hypothesis."""
import io
import os

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


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""
    def isatty(self):
        return True


def screen(raw: str) -> list[str]:
    """The lines a terminal shows: '\\r' returns to column 0, ESC[K erases to the line's end."""
    lines, col = [""], 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            lines[-1] = lines[-1][:col]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("")
            col = 0
        else:
            line = lines[-1]
            lines[-1] = line[:col] + ch + line[col + 1:]
            col += 1
        i += 1
    return lines


def run_beam(hf, stream, **kw):
    streamer = BeamTextStreamer(Letters(), stream=stream, **kw)
    out = decoding.generate(hf, [ROWS[0]], max_new_tokens=12, num_beams=4, length_penalty=-1.0, streamer=streamer)
    return Letters().decode(ROWS[0]), Letters().decode(out.sequences[0, len(ROWS[0]):].tolist())


def test_beam_text_streamer_on_a_terminal_revises_one_line(hf, monkeypatch):
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((30, 24)))
    stream = Terminal()
    prompt, answer = run_beam(hf, stream)
    raw = stream.getvalue()
    live, final = raw.rsplit("\r\x1b[K", 1)
    assert "\n" not in live and "\b" not in raw  # one line while searching, no backspaces
    assert all(len(line) <= 29 for line in screen(live))  # never wraps at 30 columns
    assert live.count("\r\x1b[K") >= 11  # redrawn after every step
    assert final == prompt + answer + "\n"  # then the answer, once, in full
    assert screen(raw) == (prompt + answer).split("\n") + [""]


def test_beam_text_streamer_into_a_pipe_writes_the_answer_once(hf):
    stream = io.StringIO()  # not a terminal
    prompt, answer = run_beam(hf, stream)
    assert stream.getvalue() == prompt + answer + "\n"
    stream = io.StringIO()
    prompt, answer = run_beam(hf, stream, skip_prompt=True)
    assert stream.getvalue() == answer + "\n"


def test_a_revision_reaching_back_past_a_line_break_leaves_nothing_behind():
    """The newcomer's case: the best beam's text changes before a newline it had already shown."""
    stream = Terminal()
    streamer = BeamTextStreamer(Letters(), stream=stream)
    streamer.put(torch.tensor([[5, 17]]))  # prompt "FR"
    for tokens in ([1], [1, 7], [1, 7, 3], [2, 8], [2, 8, 7, 4]):  # "B", "B\n", "B\nD", then "CI", "CI\nE"
        streamer.put_hypotheses(0, tokens, 0)
    streamer.end()
    assert screen(stream.getvalue()) == ["FRCI", "E", ""]  # only the last hypothesis is on screen

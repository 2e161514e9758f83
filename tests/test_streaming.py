"""HF's own streamers, unchanged, on the engine: the streamed text is exactly the generated text,
and multi-token steps push their accepted tokens together (the oracle: decode of the output)."""
import threading

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer

import decoding
from decoding.state import DecodeState
from hf_tiny import tiny
from models import checkpoint
from models.tokenizer import SHIPPED, Tokenizer

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def target():
    return checkpoint.load(SHIPPED.parent / "target", dtype=torch.float32)


def stream_in_thread(call, streamer):
    """Run `call` in a thread, as HF's TextIteratorStreamer docs do; the text and call's result."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("out", call()))
    thread.start()
    text = "".join(streamer)  # blocks per chunk; ends at streamer.end()
    thread.join(timeout=60)
    return text, result["out"]


def test_text_iterator_streamer_gets_exactly_the_generated_text(tok, target):
    ids = torch.tensor([tok.encode(PROMPT, bos=True)])
    streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=60)
    text, out = stream_in_thread(lambda: decoding.generate(target, ids, max_new_tokens=40, streamer=streamer),
                                 streamer)
    assert "\n" in text  # the shipped model writes lines: TextStreamer's newline path ran
    assert text == tok.decode(out.sequences[0, ids.shape[1]:])


def test_text_streamer_prints_prompt_and_completion(tok, target, capsys):
    ids = torch.tensor([tok.encode(PROMPT, bos=True)])
    out = decoding.generate(target, ids, max_new_tokens=12, streamer=TextStreamer(tok))
    assert capsys.readouterr().out == tok.decode(out.sequences[0]) + "\n"


def test_dropin_streams_through_model_generate(tok):
    model = tiny("llama", vocab_size=tok.vocab_size)
    ids = torch.tensor([tok.encode(PROMPT, bos=True)])
    decoding.hf.install(model)
    try:
        streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=60)
        text, out = stream_in_thread(lambda: model.generate(ids, max_new_tokens=10, do_sample=False,
                                                            streamer=streamer), streamer)
    finally:
        decoding.hf.uninstall(model)
    assert text == tok.decode(out[0, ids.shape[1]:])


class Recorder:
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def test_multi_token_steps_push_accepted_tokens_together():
    rec = Recorder()
    state = DecodeState(torch.tensor([[1, 2]]), None, max_new_tokens=10, eos_token_id=[9], pad_token_id=0,
                        streamer=rec)
    state.append(torch.tensor([[4, 5, 6, 7]]), torch.tensor([3]))  # 3 accepted of 4 offered
    state.append(torch.tensor([[8, 9, 5, 5]]), torch.tensor([4]))  # cut after eos
    assert rec.puts == [[[1, 2]], [4, 5, 6], [8, 9]]


def test_speculative_stream_equals_output(tok, target):
    draft = checkpoint.load(SHIPPED.parent / "draft", dtype=torch.float32)
    ids = torch.tensor([tok.encode(PROMPT, bos=True)])
    rec = Recorder()
    out = decoding.generate(target, ids, max_new_tokens=24, assistant_model=draft, num_assistant_tokens=4,
                            streamer=rec)
    new = [t for chunk in rec.puts[1:] for t in chunk]
    assert rec.ended and new == out.sequences[0, ids.shape[1]:].tolist()
    assert max(len(chunk) for chunk in rec.puts[1:]) > 1  # accepted drafts arrive together


def test_dropin_ends_the_stream_when_generation_fails(tok):
    model = tiny("llama", vocab_size=tok.vocab_size)
    ids = torch.tensor([tok.encode(PROMPT, bos=True)])

    def boom(input_ids, scores):
        raise RuntimeError("boom")

    errors = []

    def call():
        try:
            model.generate(ids, max_new_tokens=4, logits_processor=[boom], streamer=streamer)
        except RuntimeError as e:
            errors.append(e)
    decoding.hf.install(model)
    try:
        streamer = TextIteratorStreamer(tok, timeout=60)
        thread = threading.Thread(target=call)
        thread.start()
        text = "".join(streamer)  # would wait forever without end()
        thread.join(timeout=60)
    finally:
        decoding.hf.uninstall(model)
    assert errors and text == PROMPT

"""Suite-wide settings, and two switches to shake out order and thread-count dependence:

    DECODING_TEST_THREADS=N  torch.set_num_threads(N) before any test (default: torch's own)
    DECODING_TEST_ORDER=reverse | shuffle[:SEED]  run the collected tests in another order

e.g. `DECODING_TEST_THREADS=1 python -m pytest` then `DECODING_TEST_THREADS=2 DECODING_TEST_ORDER=reverse
python -m pytest`: the same tests must pass either way (tolerances relative to the magnitude, no test
reading state another left behind).
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (hf_tiny) importable

# No test compiles the CPU step unless it asks to (tests/test_compiled_step.py) or the run does:
# DECODING_COMPILE=1 python -m pytest ... sends every no-grad decode step through it.
os.environ.setdefault("DECODING_COMPILE", "0")


def pytest_configure(config):
    threads = os.environ.get("DECODING_TEST_THREADS")
    if threads:
        import torch
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    order = os.environ.get("DECODING_TEST_ORDER", "")
    if order == "reverse":
        items.reverse()
    elif order.startswith("shuffle"):
        seed = int(order.partition(":")[2] or 0)
        random.Random(seed).shuffle(items)
    elif order:
        raise ValueError(f"DECODING_TEST_ORDER={order!r}: use reverse, shuffle or shuffle:SEED")


def pytest_report_header(config):
    import torch
    return (f"torch threads: {torch.get_num_threads()}, order: {os.environ.get('DECODING_TEST_ORDER') or 'as collected'}")

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (hf_tiny) importable

# No test compiles the CPU step unless it asks to (tests/test_compiled_cpu.py) or the run does:
# DECODING_COMPILE=1 python -m pytest ... sends every no-grad decode step through it.
os.environ.setdefault("DECODING_COMPILE", "0")

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # interp_decode_attention's cases, shared with the torch-path tests

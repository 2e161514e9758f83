"""Decode-phase attention kernels (docs/DESIGN.md 9).

`kernels.decode_attention` is the function, although a submodule has the same name: importing the
submodule binds it on the package first, the re-export below then rebinds the name to the function
(and the submodule is callable too). Code that needs the module itself takes it with
`importlib.import_module("kernels.decode_attention")` (kernels/aot.py does).
"""
from .decode_attention import backend, decode_attention
from .reference import decode_attention_reference

__all__ = ["backend", "decode_attention", "decode_attention_reference"]

"""Models behind the protocol: native decoders, the static cache, HF weight import/export."""
from .adapt import as_decoder
from .cache import StaticCache
from .config import DecoderConfig
from .llama import LlamaDecoder
from .protocol import Cache, DecoderModel

__all__ = ["Cache", "DecoderConfig", "DecoderModel", "LlamaDecoder", "StaticCache", "as_decoder"]

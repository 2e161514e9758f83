"""Save and load native checkpoints: `model.safetensors` + `config.json` (no pickle)."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from .config import DecoderConfig
from .llama import LlamaDecoder
from .yoco import YOCOConfig, YOCODecoder

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save(model: LlamaDecoder | YOCODecoder, directory: str | Path, *, dtype=None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()
          if not (model.config.tie_embeddings and k == "lm_head.weight")}
    save_file(sd, str(d / WEIGHTS), metadata={"format": "pt"})
    model.config.save(d / CONFIG)
    return d


def load(directory: str | Path, *, dtype=None, device=None) -> LlamaDecoder | YOCODecoder:
    """A native checkpoint directory, or an HF Llama/Qwen2/Mistral directory (converted on load)."""
    d = Path(directory)
    if not (d / CONFIG).exists():
        raise FileNotFoundError(f"{d} has no {CONFIG}: expected a checkpoint directory (safetensors + config.json)")
    raw = json.loads((d / CONFIG).read_text())
    if raw.get("model_type") == "native_yoco":
        cfg = YOCOConfig.from_dict(raw)
        return load_weights(YOCODecoder(cfg), d, cfg.tie_embeddings, dtype=dtype, device=device)
    if raw.get("model_type") != "native_llama":
        from .hf_weights import from_hf
        return from_hf(d, dtype=dtype).to(device)
    cfg = DecoderConfig.from_dict(raw)
    return load_weights(LlamaDecoder(cfg), d, cfg.tie_embeddings, dtype=dtype, device=device)


def load_weights(model, d: Path, tied: bool, *, dtype=None, device=None):
    """d/model.safetensors into a freshly built native model (a tied lm_head is not stored), in the
    checkpoint's dtype unless `dtype` is given; any other missing or extra tensor is an error."""
    sd = load_file(str(d / WEIGHTS))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight" or not tied]:
        raise ValueError(f"{d / WEIGHTS} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype or next(iter(sd.values())).dtype).eval()

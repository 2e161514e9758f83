"""Golden outputs of transformers 4.55's diverse (group) beam search, which transformers 5.x dropped.

Run it in a throwaway environment with the reference version (the tests never run 4.55):

    python3 -m venv /tmp/v455
    /tmp/v455/bin/pip install torch==2.13.0 transformers==4.55.4 safetensors
    /tmp/v455/bin/python tests/golden/make_diverse_beam_golden.py

It builds two tiny random models from fixed seeds (llama-like and gpt2-like), saves them under
tests/golden/<name>/ (config.json with the constructor arguments + model.safetensors), runs 4.55's
`generate(num_beam_groups=G, diversity_penalty=...)` on a left-padded batch of three prompts over a
grid of settings, and writes the expected sequences and sequences_scores to diverse_beam.json.
Everything is seeded and single-threaded: running it again rewrites the same bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
PAD = 0
PROMPTS = [[5, 17, 23, 8, 41, 9, 27], [11, 4, 50], [6, 55, 21, 19, 30]]
MAX_NEW = 10

MODELS = {
    "llama": dict(family="llama", seed=1, config=dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=PAD)),
    "gpt2": dict(family="gpt2", seed=2, config=dict(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=PAD)),
}

# (num_beam_groups, beams per group, diversity_penalty, length_penalty, early_stopping, num_return_sequences,
#  extra generate() arguments); "eos2" asks for a second, also reachable, eos token
GRID = [
    (2, 2, 0.5, 1.0, False, 1, {}),
    (2, 2, 1.0, 1.0, False, 4, {}),
    (3, 1, 0.5, 1.0, True, 3, {}),
    (3, 2, 2.0, 0.0, "never", 2, {}),
    (2, 3, 0.7, -1.0, False, 2, {}),
    (4, 1, 1.5, 2.0, True, 4, {}),
    (2, 2, 0.3, 1.0, "never", 4, {}),
    (2, 2, 1.0, 0.5, False, 2, {"eos2": True}),
    (2, 2, 1.0, 1.0, True, 1, {"repetition_penalty": 1.3}),
    (2, 2, 1.0, 1.0, False, 2, {"min_new_tokens": 4}),
    (2, 2, 1.0, 1.0, False, 4, {"pad_token_id": 1}),
    (2, 4, 0.5, 1.0, False, 8, {"max_new_tokens": 12}),
]


def build(name: str):
    spec = MODELS[name]
    torch.manual_seed(spec["seed"])
    if spec["family"] == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**spec["config"]))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**spec["config"]))
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():  # HF's init (std 0.02) gives near-uniform logits; these are decisive
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def save(name: str, model) -> None:
    out = HERE / name
    out.mkdir(exist_ok=True)
    seen, tensors = set(), {}
    for key, t in sorted(model.state_dict().items(), key=lambda kv: (kv[0].startswith("lm_head"), kv[0])):
        if t.data_ptr() in seen:  # tied lm_head: stored once, as the embedding
            continue
        seen.add(t.data_ptr())
        tensors[key] = t.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    spec = MODELS[name]
    (out / "config.json").write_text(json.dumps({"family": spec["family"], "config": spec["config"]},
                                                indent=1, sort_keys=True) + "\n")


def left_pad(rows):
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


def reachable_eos(model, ids, mask) -> list[int]:
    """The two tokens greedy decoding emits most often after its first step: beams meet them early."""
    out = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None,
                         pad_token_id=PAD)[:, ids.shape[1] + 1:]
    counts = torch.bincount(out.flatten(), minlength=model.config.vocab_size)
    counts[PAD] = -1
    return [int(t) for t in torch.argsort(counts, descending=True, stable=True)[:2]]


def main() -> None:
    torch.set_num_threads(1)
    ids, mask = left_pad(PROMPTS)
    cases = []
    models = {}
    for name in MODELS:
        model = build(name)
        save(name, model)
        eos, eos2 = reachable_eos(model, ids, mask)
        models[name] = {"dir": name, "eos": eos, "eos2": eos2}
        for G, S, lam, lp, early, n, extra in GRID:
            kwargs = dict(num_beams=G * S, num_beam_groups=G, diversity_penalty=lam, length_penalty=lp,
                          early_stopping=early, num_return_sequences=n, max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=eos, pad_token_id=PAD)
            extra = dict(extra)
            if extra.pop("eos2", False):
                kwargs["eos_token_id"] = [eos, eos2]
            kwargs.update(extra)
            with torch.no_grad():
                out = model.generate(ids, attention_mask=mask, output_scores=True, return_dict_in_generate=True,
                                     **kwargs)
            cases.append({"model": name, "kwargs": kwargs, "sequences": out.sequences.tolist(),
                          "sequences_scores": [float(s) for s in out.sequences_scores]})
    golden = {"generator": "tests/golden/make_diverse_beam_golden.py", "transformers": transformers.__version__,
              "torch": torch.__version__.split("+")[0], "prompts": PROMPTS, "pad": PAD,
              "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "models": models, "cases": cases}
    (HERE / "diverse_beam.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {HERE / 'diverse_beam.json'}")


if __name__ == "__main__":
    main()

"""The fixed-shape decode step equals the eager forward (fp32); on CPU the graphed step runs eagerly."""
import torch

from models import DecoderConfig, LlamaDecoder
from models.compiled import GraphedStep, static_forward


def test_static_step_equals_eager_forward():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, sliding_window=5, max_seq_len=64)
    model = LlamaDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        prompt = torch.randint(0, 64, (3, 7))
        eager_cache, static_cache = model.new_cache(3, 32), model.new_cache(3, 32)
        model(prompt, eager_cache)
        model(prompt, static_cache)
        step = GraphedStep(model)
        for t, T in enumerate([1, 1, 4, 1, 3]):  # decode steps and verify blocks
            ids = torch.randint(0, 64, (3, T))
            ref = model(ids, eager_cache)
            out = step(ids, static_cache) if t % 2 else static_forward(model, ids, static_cache)
            assert torch.allclose(out, ref, atol=1e-5)
            assert torch.equal(static_cache.lengths, eager_cache.lengths)
        static_cache.truncate(torch.tensor([2, 0, 1], dtype=torch.int32))
        eager_cache.truncate(torch.tensor([2, 0, 1], dtype=torch.int32))
        ids = torch.randint(0, 64, (3, 2))
        assert torch.allclose(static_forward(model, ids, static_cache), model(ids, eager_cache), atol=1e-5)

"""bench/engine_vs_hf.py in smoke mode, through the CLI's bench front: it writes its three files."""
import json

import torch

from decoding import cli


def test_smoke_writes_json_markdown_and_png(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", "engine_vs_hf", "--smoke", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark pins its thread count
    results = json.loads((tmp_path / "engine_vs_hf.json").read_text())
    assert results["smoke"] and results["runs"] == 2 and results["machine"]["torch"] == torch.__version__
    pairs = {(r["pair"], r["batch"]) for r in results["rows"]}
    assert pairs == {(p, b) for p in ("native", "adapter-llama", "adapter-gpt2", "dropin-llama", "dropin-gpt2") for b in (1, 8)}
    for row in results["rows"]:
        assert row["match"], row  # greedy fp32: the engine's tokens are HF's
        assert row["engine_tok_s"] > 0 and row["hf_tok_s"] > 0 and len(row["engine_s"]) == 2
    table = (tmp_path / "engine_vs_hf.md").read_text()
    assert "| native |" in table and results["machine"]["device"] in table
    assert (tmp_path / "engine_vs_hf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""bench/tensor_parallel.py in smoke mode (a tiny random model), through the CLI's bench front: tp = 1
and tp = 2 rows, the same tokens, half the weights per rank, 2 collectives per layer + 2 per step."""
import json

from decoding import cli


def test_smoke_writes_json_and_markdown(tmp_path):
    argv = ["bench", "tensor_parallel", "--smoke", "--models", "125m", "--batches", "1", "2", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "tensor_parallel.json").read_text())
    assert results["smoke"] and {(r["batch"], r["tp"]) for r in results["rows"]} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for r in results["rows"]:
        assert r["match"] and r["tok_s"] > 0, r
        if r["tp"] == 2:  # the tiny config: 2 layers, untied vocab-sharded embedding and head
            assert r["weight_frac"] <= 0.55 and r["collectives_per_step"] == 2 * 2 + 2
            assert r["comm_ms_per_step"] > 0
    assert len(results["load_average"]) == 2
    assert "| random tiny |" in (tmp_path / "tensor_parallel.md").read_text()

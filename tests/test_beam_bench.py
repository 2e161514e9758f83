"""bench/beam.py --smoke runs end to end: engine and HF beam search on the same tiny weights."""
import json

from bench.beam import main


def test_beam_bench_smoke(tmp_path):
    main(["--smoke", "--out", str(tmp_path)])
    for name in ("beam.json", "beam.md", "beam.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "beam.json").read_text())
    assert res["machine"]["device"] and res["machine"]["torch"]
    assert [(r["batch"], r["num_beams"]) for r in res["results"]] == [(1, 2), (2, 2)]
    for r in res["results"]:
        assert r["engine_tok_s"] > 0 and r["hf_tok_s"] > 0
        assert r["token_match"] == 1.0  # fp32, same weights: the same beams

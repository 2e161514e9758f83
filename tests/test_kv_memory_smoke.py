"""bench/kv_memory.py --smoke runs end to end and its KV numbers follow the cache formulas."""
import json

from bench.kv_memory import main


def test_kv_memory_smoke(tmp_path):
    main(["--smoke", "--out", str(tmp_path)])
    for name in ("kv_memory.json", "kv_memory.md", "kv_memory.png", "yoco_latency.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "kv_memory.json").read_text())
    assert res["machine"]["device"] and res["machine"]["torch"]
    (rows,) = res["kv_bytes"].values()
    for r in rows:  # fp32, head_dim 8, 4 layers of 4 heads; YOCO: 2 kv heads, 2 rings of 16 + 8
        per_kv_head_token = 2 * 8 * 4
        assert r["MHA"] == 4 * 4 * per_kv_head_token * r["context"]
        assert r["MHA"] == 4 * r["MQA"] and r["GQA"] == 2 * r["MQA"]
        assert r["YOCO"] == 2 * per_kv_head_token * (r["context"] + 2 * (16 + 8))
    assert [r["prompt"] for r in res["prefill"]] == [64, 256]

"""The kernel benchmark's CPU rehearsal writes the same JSON + markdown + PNG as a GPU run."""
import json

from bench import kernel_bench


def test_kernel_bench_smoke_writes_results(tmp_path, monkeypatch):
    monkeypatch.delenv("DECODING_ATTN", raising=False)
    kernel_bench.main(["--smoke", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "kernel_bench.json").read_text())
    assert results["smoke"] and results["copy"]["gb_per_s"] > 0
    rows = results["rows"]
    assert {r["impl"] for r in rows} >= {"split", "lean", "sdpa (no mask)"}
    assert any(r["context"] == "ragged" for r in rows)
    assert all("error" not in r for r in rows), [r["error"] for r in rows if "error" in r]
    assert all(r["checked"] for r in rows if r["impl"] in ("split", "lean"))
    assert "| context |" in (tmp_path / "kernel_bench.md").read_text()
    assert (tmp_path / "kernel_bench.png").stat().st_size > 0

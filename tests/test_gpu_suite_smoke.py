"""The GPU suite's CPU rehearsal runs every section and writes its files (issue 12: arrive rehearsed)."""
import json

from bench import gpu_suite


def test_gpu_suite_smoke(tmp_path):
    results = gpu_suite.main(["--smoke", "--out", str(tmp_path)])
    for name in gpu_suite.SECTIONS:
        assert "error" not in results[name], results[name]["error"]
    assert results["kernel_check"]["all_ok"]
    out = next(tmp_path.iterdir())
    saved = json.loads((out / "gpu_suite.json").read_text())
    assert saved["e2e_1b"]["rows"] and (out / "gpu_suite.md").exists() and (out / "gpu_suite.png").exists()
    assert (out / "kernel_bench.json").exists()

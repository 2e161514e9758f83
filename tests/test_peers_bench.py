"""bench/peers.py in smoke mode: every peer is listed (run, or absent with the install hint), each
one that ran returns the engine's tokens, and the engine's tokens are HF generate's (the oracle).
Runs with whichever peers are installed; CI's default install has none of them."""
import json

import torch

from bench import peers
from bench.peer import missing


def test_smoke_lists_every_peer_and_matches_hf(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert peers.main(["--smoke", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark pins its thread count
    results = json.loads((tmp_path / "peers.json").read_text())
    rows = results["rows"]
    for case in peers.CASES:
        got = {r["system"]: r for r in rows if r["case"] == case.name and r["batch"] == case.batch}
        assert set(peers.PEERS) <= set(got), (case, sorted(got))
        assert got["engine"]["status"] == "ok" and got["engine"]["tok_s"] > 0
        for peer in peers.PEERS:
            r = got[peer]
            if missing(peer):
                assert r["status"].startswith("absent: pip install -e '.[peers]'"), r
            elif peer == "llama.cpp" and case.num_beams > 1:
                assert r["status"].startswith("n/a"), r
            else:  # fp32 on tiny random weights: the same tokens (HF eager is the oracle)
                assert r["status"] == "ok" and r["tokens_equal"], r
                assert r["tok_s"] > 0 and r["x_engine"] > 0
    spec = [r for r in rows if r["system"] in (peers.SPEC, peers.LOOKUP)]
    assert len(spec) == 2 and all(r["tokens_equal"] for r in spec)  # exact: the engine's greedy tokens
    assert (tmp_path / "peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "peers.md").read_text()
    assert all(peer in table for peer in peers.PEERS)

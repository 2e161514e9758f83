"""Decode attention: the PyTorch path and the dispatcher in this process; the Triton kernels in
the interpreter (a child pytest with TRITON_INTERPRET=1) and compiled ahead of time for sm_90
(a second child, started first so the two share the machine's cores)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp_decode_attention import MATRIX, check, make_case, reference, run
from kernels import decode_attention, decode_attention_reference

ROOT = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().with_name("interp_decode_attention.py")


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DECODING_ATTN", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**env, **extra}


@pytest.fixture(scope="module")
def aot_job(tmp_path_factory):
    pytest.importorskip("triton")
    log = tmp_path_factory.mktemp("aot") / "aot.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kernels.aot"], cwd=ROOT, env=_child_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    yield proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_triton_kernels_in_interpreter(aot_job):
    cmd = [sys.executable, "-m", "pytest", str(INNER), "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning"]
    res = subprocess.run(cmd, cwd=ROOT, env=_child_env(TRITON_INTERPRET="1"), capture_output=True, text=True,
                         timeout=900)
    if res.returncode != 0:
        pytest.fail(f"interpreter tests failed (rc={res.returncode}):\n{res.stdout[-12000:]}\n{res.stderr[-4000:]}")


def test_aot_compiles_every_specialisation_for_sm90(aot_job):
    aot = pytest.importorskip("kernels.aot")
    da = aot.da
    # the sweep covers every tile shape block_config can return
    swept = {(dtype, tuple(da.block_config(D, r, dtype)[0].items()))
             for dtype in aot.DTYPES for D in aot.HEAD_DIMS for r in aot.QUERY_ROWS}
    for dtype in aot.DTYPES:
        for D in range(1, 257):
            for rows in (1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 128, 256):
                assert (dtype, tuple(da.block_config(D, rows, dtype)[0].items())) in swept, (dtype, D, rows)
    proc, log = aot_job
    rc = proc.wait(timeout=900)
    text = log.read_text()
    assert rc == 0, f"sm_90 compilation failed:\n{text[-12000:]}"
    assert text.count("ok   ") == len(list(aot.specializations())), text


# -- PyTorch path (what CPU tensors get) and dispatcher, in this process


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.delenv("DECODING_ATTN", raising=False)


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: f"B{r[0]}T{r[1]}H{r[2]}/{r[3]}D{r[4]}w{r[9]}-{str(r[10])[6:]}-{r[11]}")
def test_torch_path_matches_float64_reference(row, torch_backend):
    B, T, Hq, Hkv, D, S, lengths, q_lens, kv_start, window, dtype, layout, _ = row
    case = make_case(B, T, Hq, Hkv, D, S, lengths, q_lens=q_lens, kv_start=kv_start, dtype=dtype, layout=layout)
    check(case, run(case, window), window)


def test_reference_matches_the_masking_rule_by_hand():
    """The oracle itself, against a loop that spells out docs/DESIGN.md 9's visibility rule."""
    B, T, Hq, Hkv, D, S, w = 2, 3, 4, 2, 8, 20, 6
    q, k, v, lens = make_case(B, T, Hq, Hkv, D, S, [12, 20], q_lens=[3, 2], kv_start=[0, 4], dtype=torch.float64)
    out = reference((q, k, v, lens), window=w)
    for b in range(B):
        n_len, q_len, start = (int(lens[key][b]) for key in ("lengths", "q_lens", "kv_start"))
        for t in range(T):
            for h in range(Hq):
                if t >= q_len:
                    assert (out[b, t, h] == 0).all()
                    continue
                last = n_len - q_len + t
                keys = [n for n in range(S) if start <= n <= last and n > last - w]
                kk, vv = k[b, h // (Hq // Hkv), keys], v[b, h // (Hq // Hkv), keys]
                p = torch.softmax(kk @ q[b, t, h] / math.sqrt(D), 0)
                torch.testing.assert_close(out[b, t, h], p @ vv)


def test_dispatcher_reads_the_override_at_call_time(monkeypatch):
    case = make_case(1, 1, 2, 2, 16, 8, [5])
    monkeypatch.setenv("DECODING_ATTN", "torch")
    torch.testing.assert_close(run(case), reference(case))
    monkeypatch.setenv("DECODING_ATTN", "triton")  # CPU tensors without the interpreter
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            run(case)
    monkeypatch.setenv("DECODING_ATTN", "cuda")
    with pytest.raises(ValueError, match="DECODING_ATTN"):
        run(case)


def test_defaults_and_shape_errors(torch_backend):
    q, k, v, lens = make_case(2, 2, 4, 2, 16, 10, [6, 9])
    out = decode_attention(q, k, v, lens["lengths"])  # q_lens = T, kv_start = 0
    torch.testing.assert_close(out, decode_attention_reference(q, k, v, lens["lengths"]))
    with pytest.raises(ValueError):
        decode_attention(q[:, :, :3], k, v, lens["lengths"])  # 3 query heads over 2 kv heads
    with pytest.raises(ValueError):
        decode_attention(q, k, v, lens["lengths"], schedule="stream")

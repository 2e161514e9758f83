"""`python -m decoding viz`: the decoding picture renders for every strategy on the skeleton (shipped
target, draft and heads), with one row per target forward and every kept token in its place."""
import pytest
import torch

from decoding import cli, viz
from models.artifacts import shipped
from models.checkpoint import load
from models.tokenizer import Tokenizer

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()  # viz picks one thread; restore the suite's afterwards
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("strategy", viz.STRATEGIES)
def test_picture_renders_one_row_per_forward(strategy, tmp_path, capsys):
    png, page = tmp_path / "p.png", tmp_path / "p.html"
    rc = cli.main(["viz", "--strategy", strategy, "--prompt", PROMPT, "--max-new-tokens", "10",
                   "--out", str(png), "--html", str(page)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert png.stat().st_size > 5000 and page.read_text().count("<tr>") >= 2
    rows = int(printed.out.split("(")[1].split()[0])  # "wrote p.png (N forwards)"
    assert page.read_text().count("<tr>") == rows + 1  # + the output row


def test_forwards_match_the_run():
    model, tok = load(shipped("target"), dtype=torch.float32), Tokenizer.load()
    ids = tok(PROMPT)["input_ids"]
    out, fwds = viz.trace(model, ids, strategy="gs_jacobi", jacobi_init="ngram", block_size=4, max_new_tokens=12)
    assert len(fwds) == out.stats.target_forwards
    final = out.sequences[0, len(ids):].tolist()
    for f in fwds:  # each forward's kept tokens sit where the output has them
        assert final[f.start:f.start + len(f.kept)] == f.kept and len(f.kept) >= 1
    assert sum(len(f.kept) for f in fwds) == len(final)
    kinds = {kind for *_, kind in viz.cells(fwds, final)}
    assert {"own", "rejected"} <= kinds


def test_a_strategy_off_the_skeleton_fails_clearly(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise NotImplementedError("generate(): `strategy='blockwise'` is not implemented by the engine yet")
    monkeypatch.setattr(viz, "trace", refuse)
    rc = cli.main(["viz", "--strategy", "blockwise", "--prompt", "x", "--out", str(tmp_path / "p.png")])
    assert rc == 2 and "--strategy blockwise cannot run here yet" in capsys.readouterr().err


def never(*args, **kwargs):
    raise AssertionError("decoding ran before the bad argument was reported")


@pytest.mark.parametrize("argv, message", [
    (["--out", "/no/such/dir/x.png"], "--out: the directory /no/such/dir does not exist"),
    (["--html", "/no/such/dir/x.html"], "--html: the directory /no/such/dir does not exist"),
    (["--heads", "/no/such/heads"], "--heads: no such directory: /no/such/heads"),
])
def test_bad_output_paths_fail_before_decoding(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(viz, "trace", never)
    monkeypatch.setattr(viz, "load_model", never)
    argv = ["--out", str(tmp_path / "p.png"), *argv] if argv[0] != "--out" else argv
    rc = cli.main(["viz", "--strategy", "blockwise", "--prompt", "x", *argv])
    err = capsys.readouterr().err
    assert rc in (1, 2) and message in err and "Traceback" not in err


def test_a_long_run_draws_a_bounded_picture(tmp_path):
    """200 tokens, one per forward (Jacobi at its worst): the PNG shows a window, the HTML every row."""
    from matplotlib.image import imread
    fwds = [viz.Forward(start=i, guesses=[7, 8, 9, 10], accepted=0, kept=[7]) for i in range(200)]
    final = [7] * 200
    assert viz.window(fwds) == (viz.MAX_ROWS, viz.MAX_COLUMNS)
    png = viz.draw(fwds, final, Tokenizer.load(), tmp_path / "long.png", "jacobi: 200 tokens")
    height, width = imread(png).shape[:2]
    assert width <= 3000 and height <= 2000, (width, height)
    page = viz.write_html(fwds, final, Tokenizer.load(), tmp_path / "long.html", "t")
    assert page.read_text().count("<tr>") == 201
    few = fwds[:5]
    assert viz.window(few) == (5, 8)  # a short run is drawn whole: the last forward's guesses end at 4 + 4

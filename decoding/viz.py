"""The decoding picture: for one prompt, what every target forward guessed and kept.

    python -m decoding viz --strategy jacobi --prompt "def f(x):" --out jacobi.png [--html jacobi.html]

One row per target forward (top to bottom), one column per output position. In a row: the guesses
the forward accepted (green), the token the target chose itself (blue: the correction at the first
rejection, or the bonus after a full acceptance), the guesses it rejected (grey). A grey guess
with a green frame already equals the final token at its position but waits for its prefix: the
dependency view of Santilli et al.'s DDGviz, where a token fixed long before it is accepted does
not depend on what precedes it. Works for every strategy on the propose-verify skeleton (Jacobi,
GS-Jacobi, SJD, speculative, blockwise): the rounds come from decoding.verify.tracing().
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from models.artifacts import SHIPPED

from .cli_common import (EXIT_USAGE, CLIError, add_prompt_args, check_heads, check_tokenizer_path,
                         check_writable, default_path, encode_prompts, load_model, load_tokenizer, model_type,
                         read_prompts)

COLORS = dict(accepted="#4caf50", own="#2f6fd6", rejected="#e4e4e4", frame="#2e7d32")
STRATEGIES = ("jacobi", "gs_jacobi", "sjd", "speculative", "blockwise")
# the PNG shows at most this many output positions and forwards (about 2900 x 1700 pixels); a
# longer run is cut there, and the HTML table (--html) has every cell
MAX_COLUMNS, MAX_ROWS = 48, 48


@dataclass
class Forward:
    """One target forward of row 0, in output positions."""
    start: int  # tokens kept before it: position of its first guess
    guesses: list[int]  # what it verified
    accepted: int  # guesses kept before the target's own token
    kept: list[int]  # tokens it kept (accepted guesses, then the target's own, cut at a stop)


def forwards(rounds) -> list[Forward]:
    out, start = [], 0
    for rnd in rounds:
        kept = int(rnd.kept[0])
        out.append(Forward(start, rnd.draft[0].tolist(), int(rnd.accepted[0]), rnd.tokens[0, :kept].tolist()))
        start += kept
    return out


def trace(model, prompt_ids: list[int], **kw):
    """generate() one prompt, collecting its rounds: (output, [Forward])."""
    import torch

    import decoding
    from .verify import tracing
    with tracing() as rounds:
        out = decoding.generate(model, torch.tensor([prompt_ids]), **kw)
    return out, forwards(rounds)


# -- what a cell shows --------------------------------------------------------------------------------

def piece(tok, i: int) -> str:
    """A token as a short visible string: spaces as '·', newlines as '↵'."""
    try:
        text = tok.convert_ids_to_tokens(int(i)) if hasattr(tok, "convert_ids_to_tokens") else tok.decode([i])
    except Exception:  # ids outside the tokenizer (padded vocabularies)
        text = None
    if text is None:
        return f"#{i}"
    if text == "<0x0A>":
        return "↵"
    for a, b in (("▁", "·"), ("Ġ", "·"), ("Ċ", "↵"), ("\n", "↵"), (" ", "·"), ("\t", "→")):
        text = text.replace(a, b)
    return text


def cells(fwds: list[Forward], final: list[int]):
    """(row, position, token, kind) for every cell; kind in accepted / own / rejected / waiting."""
    for r, f in enumerate(fwds):
        for j, t in enumerate(f.kept):
            yield r, f.start + j, t, "accepted" if j < f.accepted else "own"
        for j in range(len(f.kept), len(f.guesses)):
            t = f.guesses[j]
            p = f.start + j
            yield r, p, t, "waiting" if p < len(final) and final[p] == t else "rejected"


# -- PNG --------------------------------------------------------------------------------------------------

def window(fwds: list[Forward], columns: int = MAX_COLUMNS, rows: int = MAX_ROWS) -> tuple[int, int]:
    """(forwards, positions) the PNG shows: the first forwards that start inside the first `columns`
    output positions, at most `rows` of them."""
    n = min(rows, sum(f.start < columns for f in fwds))  # starts only grow: a prefix of fwds
    width = max([f.start + max(len(f.guesses), len(f.kept)) for f in fwds[:n]] + [1])
    return n, min(width, columns)


def draw(fwds: list[Forward], final: list[int], tok, path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    n, width = window(fwds)
    if n < len(fwds) or width < len(final):
        title += f"\nshown: forwards 1-{n} of {len(fwds)}, positions 0-{width - 1} of {len(final)} (--html: all)"
    fwds, final_shown = fwds[:n], final[:width]
    cw, ch = 0.5, 0.28  # inches per cell
    extra = 0.16 * title.count("\n")  # inches per further title line
    left, right, top, bottom = 1.1, 0.2, 0.75 + extra, 0.5  # margins, inches: labels, title and legend
    W, H = left + width * cw + right, top + (n + 2) * ch + bottom
    fig = plt.figure(figsize=(max(W, 8.5), H))
    W = max(W, 8.5)
    ax = fig.add_axes([left / W, bottom / H, width * cw / W, (n + 2) * ch / H])
    ax.set_xlim(0, width)
    ax.set_ylim(n + 2, 0)
    for r, p, t, kind in cells(fwds, final):
        if p >= width:
            continue
        face = COLORS["rejected"] if kind == "waiting" else COLORS[kind]
        edge = COLORS["frame"] if kind == "waiting" else "white"
        ax.add_patch(Rectangle((p + 0.03, r + 0.06), 0.94, 0.88, facecolor=face, edgecolor=edge,
                               linewidth=1.6 if kind == "waiting" else 0.5))
        color = "white" if kind in ("accepted", "own") else "#666666"
        ax.text(p + 0.5, r + 0.52, piece(tok, t)[:7], ha="center", va="center", fontsize=6.5, color=color,
                family="monospace", clip_on=True)
    for p, t in enumerate(final_shown):  # the output, once more, under a gap
        ax.add_patch(Rectangle((p + 0.03, n + 1.06), 0.94, 0.88, facecolor="#fff6d5", edgecolor="#c8b560",
                               linewidth=0.5))
        ax.text(p + 0.5, n + 1.52, piece(tok, t)[:7], ha="center", va="center", fontsize=6.5,
                family="monospace", clip_on=True)
    ax.set_yticks([r + 0.5 for r in range(n)] + [n + 1.5],
                  [f"{r + 1}: +{len(f.kept)}" for r, f in enumerate(fwds)] + ["output"], fontsize=7)
    ax.set_xticks(range(0, width, 5))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("output position")
    ax.set_ylabel("target forward: tokens kept")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.text(left / W, 1 - 0.2 / H, title, fontsize=9, va="top")
    legend = [Patch(color=COLORS["accepted"], label="accepted guess"),
              Patch(color=COLORS["own"], label="target's own token (correction / bonus)"),
              Patch(color=COLORS["rejected"], label="rejected guess"),
              Patch(facecolor=COLORS["rejected"], edgecolor=COLORS["frame"], linewidth=1.6,
                    label="rejected, but already the final token (waits for its prefix)")]
    fig.legend(handles=legend, loc="upper left", bbox_to_anchor=(left / W - 0.01, 1 - (0.4 + extra) / H), ncol=4,
               fontsize=7, frameon=False, borderaxespad=0)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# -- HTML -------------------------------------------------------------------------------------------------

def write_html(fwds: list[Forward], final: list[int], tok, path, title: str) -> Path:
    width = max([f.start + max(len(f.guesses), len(f.kept)) for f in fwds] + [len(final), 1])
    grid = [[None] * width for _ in fwds]
    for r, p, t, kind in cells(fwds, final):
        grid[r][p] = (t, kind)
    style = {"accepted": f"background:{COLORS['accepted']};color:#fff",
             "own": f"background:{COLORS['own']};color:#fff",
             "rejected": f"background:{COLORS['rejected']};color:#666",
             "waiting": f"background:{COLORS['rejected']};color:#666;outline:2px solid {COLORS['frame']}"}
    rows = []
    for r, (f, line) in enumerate(zip(fwds, grid)):
        tds = "".join("<td></td>" if c is None else
                      f"<td style='{style[c[1]]}' title='{c[1]}'>{html.escape(piece(tok, c[0]))}</td>" for c in line)
        rows.append(f"<tr><th>{r + 1}: +{len(f.kept)}</th>{tds}</tr>")
    out = "".join(f"<td style='background:#fff6d5'>{html.escape(piece(tok, t))}</td>" for t in final)
    rows.append(f"<tr><th>output</th>{out}</tr>")
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>table{border-collapse:separate;border-spacing:2px;font:11px monospace}"
            "td{padding:2px 4px;white-space:pre}th{text-align:right;font-weight:normal;padding-right:6px}</style>"
            f"<h3 style='font-family:sans-serif'>{html.escape(title)}</h3>"
            f"<p style='font-family:sans-serif;font-size:12px'>green: accepted guess; blue: the target's own token; "
            f"grey: rejected guess (framed: already the final token)</p><table>{''.join(rows)}</table>")
    Path(path).write_text(page)
    return Path(path)


# -- the CLI subcommand -----------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("viz", help="draw which tokens each target forward accepted (PNG, optional HTML)",
                       description=__doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("--strategy", required=True, choices=STRATEGIES, help="the decoding mode to draw")
    add_prompt_args(p, many=False)
    p.add_argument("--model", metavar="PATH", help="model directory (default: the shipped target)")
    p.add_argument("--tokenizer", metavar="PATH", help="default: the model's own, else the shipped one")
    p.add_argument("--assistant", metavar="PATH", help="speculative: draft model directory (default: the shipped draft)")
    p.add_argument("--heads", metavar="PATH", help="blockwise: heads directory (default: the shipped heads)")
    p.add_argument("--block-size", type=int, help="guesses per forward (speculative: num_assistant_tokens, default 4)")
    p.add_argument("--jacobi-init", choices=("pad", "repeat", "ngram"), help="jacobi/gs_jacobi/sjd: how fresh "
                   "guesses are filled")
    p.add_argument("--max-new-tokens", type=int, default=32, help=f"tokens to generate (one column each; the PNG "
                   f"shows the first {MAX_COLUMNS} columns and {MAX_ROWS} forwards, the HTML all)")
    p.add_argument("--seed", type=int, default=0, help="sjd: the sampling seed")
    p.add_argument("--out", metavar="PNG", help="default: decoding_<strategy>.png")
    p.add_argument("--html", metavar="HTML", help="also write the picture as an HTML table")
    p.set_defaults(func=main)


def strategy_kwargs(args) -> dict:
    kw = dict(max_new_tokens=args.max_new_tokens)
    if args.strategy == "speculative":
        draft = load_model(args.assistant or default_path("draft"), device="cpu", dtype=None, flag="--assistant")
        return dict(kw, assistant_model=draft, num_assistant_tokens=args.block_size or 4,
                    assistant_confidence_threshold=0.0)
    kw["strategy"] = args.strategy
    if args.block_size:
        kw["block_size"] = args.block_size
    if args.jacobi_init:
        kw["jacobi_init"] = args.jacobi_init
    if args.heads:
        kw["heads"] = args.heads
    if args.strategy == "sjd":
        kw.update(do_sample=True, seed=args.seed)
    return kw


def check_inputs(args) -> str:
    """Every path, before the model loads or decodes; the PNG's path."""
    png = args.out or f"decoding_{args.strategy}.png"
    check_writable(png, "--out")
    if args.html:
        check_writable(args.html, "--html")
    if args.model:
        model_type(Path(args.model))
    if args.assistant:
        if args.strategy != "speculative":
            raise CLIError("--assistant is for --strategy speculative", EXIT_USAGE)
        model_type(Path(args.assistant), "--assistant")
    if args.heads:
        if args.strategy != "blockwise":
            raise CLIError("--heads is for --strategy blockwise", EXIT_USAGE)
        check_heads(args.heads)
    check_tokenizer_path(args.tokenizer)
    return png


def main(args) -> int:
    import torch

    png = check_inputs(args)
    [prompt] = read_prompts(args, many=False)
    torch.set_num_threads(1)
    model = load_model(args.model, device="cpu", dtype=torch.float32)
    tok = load_tokenizer(args.tokenizer, args.model or SHIPPED / "target", model)
    [ids] = encode_prompts(tok, [prompt])
    kw = strategy_kwargs(args)
    try:
        out, fwds = trace(model, ids, **kw)
    except (NotImplementedError, ImportError) as e:
        raise CLIError(f"--strategy {args.strategy} cannot run here yet: {e}", EXIT_USAGE) from None
    except (ValueError, TypeError) as e:
        raise CLIError(f"invalid arguments: {e}", EXIT_USAGE) from None
    if not fwds:
        raise CLIError(f"--strategy {args.strategy} does not run on the propose-verify skeleton: nothing to draw",
                       EXIT_USAGE)
    final = out.sequences[0, len(ids):].tolist()
    s = out.stats
    shown = prompt if len(prompt) <= 60 else "..." + prompt[-57:]
    title = (f"{args.strategy}: {s.new_tokens} tokens in {s.target_forwards} target forwards (tau {s.tau:.2f}: "
             f"tokens per forward); prompt {shown!r}")
    draw(fwds, final, tok, png, title)
    n, width = window(fwds)
    cut = (f"; the picture shows forwards 1-{n} and positions 0-{width - 1}, --html has all"
           if n < len(fwds) or width < len(final) else "")
    print(f"wrote {png} ({len(fwds)} forwards{cut})")
    if args.html:
        print(f"wrote {write_html(fwds, final, tok, args.html, title)}")
    return 0

"""What the CLI verbs share (decoding/cli.py's generate, decoding/viz.py's viz): errors without
tracebacks, model and tokenizer loading, prompt sources, path checks that run before any work."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from models.artifacts import shipped

from .capabilities import as_decoder

EXIT_LOAD, EXIT_USAGE = 1, 2
SMALL_MODEL = 50_000_000  # parameters; below this, one CPU thread decodes fastest


class CLIError(Exception):
    """A message for the user and an exit code, no traceback."""

    def __init__(self, message: str, code: int = EXIT_LOAD):
        super().__init__(message)
        self.code = code


def pick_device(name: str):
    """--device as a torch.device ("auto": cuda when there is one), or a CLIError before anything loads."""
    import torch
    try:
        device = torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise CLIError(f"--device {name}: {e}", EXIT_USAGE) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise CLIError(f"--device {name}: no CUDA device here; use --device cpu (or auto)", EXIT_USAGE)
        if device.index is not None and device.index >= count:
            raise CLIError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}",
                           EXIT_USAGE)
    return device


def default_path(name: str) -> Path:
    """A shipped artifact (models/shipped/<name>), or a CLIError saying it is missing."""
    try:
        return shipped(name)
    except FileNotFoundError as e:
        raise CLIError(f"{e}; pass the path explicitly") from None


# -- checks before any work ---------------------------------------------------------------------------

def model_type(directory: Path, flag: str = "--model") -> str:
    """config.json's model_type of a model directory; a CLIError naming `flag` if it is not one."""
    if not directory.exists():
        raise CLIError(f"{flag}: no such model directory: {directory}")
    if not directory.is_dir():
        raise CLIError(f"{flag}: {directory} is a file; pass a directory (safetensors + config.json)")
    config = directory / "config.json"
    if not config.exists():
        raise CLIError(f"{flag}: {directory} is not a model directory: it has no config.json (expected a native "
                       "checkpoint or a Hugging Face model directory: config.json + *.safetensors)")
    try:
        return json.loads(config.read_text()).get("model_type", "")
    except json.JSONDecodeError as e:
        raise CLIError(f"{flag}: {config} is not valid JSON: {e}") from None


def check_heads(path) -> None:
    """--heads must name a directory written by models.heads.save_heads."""
    from models.heads import CONFIG, WEIGHTS
    d = Path(path)
    if not d.is_dir():
        raise CLIError(f"--heads: no such directory: {d} (a heads directory holds {WEIGHTS} and {CONFIG}; "
                       f"leave --heads out for the shipped heads)")
    missing = [name for name in (WEIGHTS, CONFIG) if not (d / name).exists()]
    if missing:
        raise CLIError(f"--heads: {d} is not a heads directory: it has no {' or '.join(missing)} (written by "
                       "python -m models.training.train_heads)")


def check_writable(path, flag: str) -> None:
    """An output file's directory must exist and be writable: checked before decoding, not after."""
    parent = Path(path).parent
    if Path(path).is_dir():
        raise CLIError(f"{flag}: {path} is a directory; pass a file name", EXIT_USAGE)
    if not parent.is_dir():
        raise CLIError(f"{flag}: the directory {parent} does not exist; create it or pick another path", EXIT_USAGE)
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{flag}: cannot write into {parent}", EXIT_USAGE)


# -- loading -------------------------------------------------------------------------------------

def load_model(path, *, device, dtype, native: bool = False, flag: str = "--model"):
    """A native decoder (native checkpoints; HF Llama-family directories with native=True) or an HF
    causal LM (any other HF directory, run through the adapter). path None: the shipped target."""
    directory = Path(path) if path is not None else default_path("target")
    kind = model_type(directory, flag)
    try:
        if kind.startswith("native_") or native:
            from models import checkpoint
            model = checkpoint.load(directory, dtype=dtype, device=device)
        else:
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(directory).eval()
            model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    except Exception as e:  # safetensors, config and transformers errors: all "this cannot be loaded"
        raise CLIError(f"{flag}: cannot load a model from {directory}: {type(e).__name__}: {e}") from None
    return model.eval()


def vocab_size(model) -> int:
    return as_decoder(model).vocab_size


def check_tokenizer_path(path) -> None:
    if path and not Path(path).exists():
        raise CLIError(f"--tokenizer: no such file or directory: {path}")


def load_tokenizer(path, model_dir, model):
    """--tokenizer, else the model directory's own, else the shipped one if the vocabularies agree."""
    from models.tokenizer import Tokenizer
    for candidate in ([Path(path)] if path else []) + ([Path(model_dir)] if model_dir else []):
        if candidate.is_file():
            return Tokenizer.load(candidate)
        if (candidate / "tokenizer.json").exists() or (candidate / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer
            return AutoTokenizer.from_pretrained(candidate)
        if (candidate / "tokenizer.model").exists():
            return Tokenizer.load(candidate / "tokenizer.model")
        if path and candidate == Path(path):
            raise CLIError(f"--tokenizer: no tokenizer at {candidate} (a .model file or a directory with "
                           "tokenizer files)")
    tok = Tokenizer.load()
    if tok.vocab_size != vocab_size(model):
        raise CLIError(f"{model_dir} has no tokenizer and its vocabulary ({vocab_size(model)}) is not the shipped "
                       f"tokenizer's ({tok.vocab_size}); pass --tokenizer PATH")
    return tok


def use_threads(threads: int, model, device) -> None:
    """--threads N, else one thread for a small model on CPU whose steps run eagerly: its step is
    per-op overhead, and a second thread only adds synchronisation. A compiled step (one C++ call)
    uses every thread: the shipped target's greedy decode ran 1.7x faster on 2 threads than on 1."""
    import torch
    from models.compiled_cpu import runs_compiled
    if threads:
        torch.set_num_threads(threads)
    elif device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL \
            and not runs_compiled(model):
        torch.set_num_threads(1)


# -- prompts ----------------------------------------------------------------------------------------

class _Source(argparse.Action):
    """--prompt TEXT and --prompt-file PATH append ("text" | "file", value) to one list, in the order given."""

    def __call__(self, parser, namespace, value, option_string=None):
        kind = "text" if option_string == "--prompt" else "file"
        namespace.prompt_sources = [*(getattr(namespace, "prompt_sources", None) or []), (kind, value)]


def add_prompt_args(group, *, many: bool = True) -> None:
    """--prompt / --prompt-file / --prompt-per-line; stdin when neither is given and it is not a terminal."""
    group.set_defaults(prompt_sources=None)
    again = " (repeatable: several prompts decode as one batch)" if many else ""
    group.add_argument("--prompt", action=_Source, metavar="TEXT", help="text to complete" + again +
                       "; with no --prompt or --prompt-file the prompt is read from stdin when it is piped")
    group.add_argument("--prompt-file", action=_Source, metavar="PATH", help="a file whose whole text (verbatim, "
                       "final newline included) is one prompt; '-' reads stdin" + again)
    if many:
        group.add_argument("--prompt-per-line", action="store_true", help="each non-empty line of --prompt-file "
                           "or stdin is its own prompt")


def _read(path: str, stdin) -> str:
    if path == "-":
        return stdin.read()
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--prompt-file: no such file: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--prompt-file: cannot read {path} as UTF-8 text: {e}") from None


def read_prompts(args, stdin=None, *, many: bool = True) -> list[str]:
    """The prompts, in the order given: --prompt texts, --prompt-file contents, else piped stdin."""
    stdin = sys.stdin if stdin is None else stdin
    sources = args.prompt_sources or []
    if not sources:
        if stdin is None or stdin.isatty():
            raise CLIError("no prompt: pass --prompt TEXT, --prompt-file PATH, or pipe the prompt on stdin",
                           EXIT_USAGE)
        sources = [("file", "-")]
    if sum(v == "-" for k, v in sources if k == "file") > 1:
        raise CLIError("--prompt-file - (stdin) can be read only once", EXIT_USAGE)
    per_line = getattr(args, "prompt_per_line", False)
    prompts = []
    for kind, value in sources:
        if kind == "text":
            prompts.append(value)
        elif per_line:
            prompts += [line for line in _read(value, stdin).splitlines() if line.strip()]
        else:
            prompts.append(_read(value, stdin))
    if not prompts:
        raise CLIError("no prompt: the prompt file or stdin holds no non-empty line", EXIT_USAGE)
    if not many and len(prompts) != 1:
        raise CLIError(f"this command draws one prompt, got {len(prompts)}", EXIT_USAGE)
    return prompts


def encode_prompts(tok, prompts: list[str]) -> list[list[int]]:
    out = []
    for i, text in enumerate(prompts):
        ids = tok(text)["input_ids"]
        if not ids:
            which = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
            raise CLIError(f"{which} encodes to no tokens; pass some text", EXIT_USAGE)
        out.append(list(ids))
    return out

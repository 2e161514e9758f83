"""`torchrun --nproc-per-node N -m decoding generate --tensor-parallel ...`: every rank joins the world
(gloo on CPU with one torch thread, NCCL on CUDA), loads its shard of the model (models/parallel.py)
and decodes; all ranks compute the same tokens, and rank 0 alone prints them."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def join(device_arg: str):
    """The rank's device, after joining the torchrun world; stdout silenced on ranks > 0."""
    from .cli_common import EXIT_USAGE, CLIError, pick_device
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise CLIError("--tensor-parallel runs under torchrun: torchrun --nproc-per-node N -m decoding generate "
                       "--tensor-parallel ...", EXIT_USAGE)
    if device_arg not in ("auto", "cpu") and not device_arg.startswith("cuda"):
        raise CLIError(f"--device {device_arg}: --tensor-parallel runs on cpu or cuda", EXIT_USAGE)
    cuda = pick_device(device_arg).type == "cuda"
    from models.parallel import init_distributed
    device = init_distributed("nccl" if cuda else "gloo")
    if int(os.environ["RANK"]) != 0:
        sys.stdout = open(os.devnull, "w")  # the same text on every rank: print it once
    return device


def load_sharded(path: Path, *, device, dtype, native: bool):
    """This rank's shard: native checkpoints read only its slices; HF Llama-family directories
    (--native) are converted whole, then sharded."""
    from .cli_common import CLIError, load_model, model_type
    from models.parallel import tensor_parallel
    from models.parallel_load import load_tensor_parallel
    kind = model_type(Path(path))
    try:
        if kind.startswith("native_"):
            return load_tensor_parallel(path, dtype=dtype, device=device)
        if not native:
            raise CLIError(f"--tensor-parallel shards native decoders: add --native to convert the Hugging Face "
                           f"model in {path}")
        return tensor_parallel(load_model(path, device=device, dtype=dtype, native=True))
    except (TypeError, ValueError) as e:
        raise CLIError(f"cannot shard {path}: {e}") from None


def leave() -> None:
    """Leave the world together: a rank that exits while its peer is still in a collective can make
    gloo abort the peer (SIGABRT) on a reset connection."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

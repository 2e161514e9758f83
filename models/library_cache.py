"""The on-disk cache of compiled CPU step libraries (models/compiled_cpu.py): where they live, the
weights' values hash that keys a frozen library, and the checked load that never uses a stale or
corrupt file.

Folder: $DECODING_COMPILE_CACHE, else $XDG_CACHE_HOME/decoding/compiled (~/.cache/...). A library
`<model>-<digest>.pt2` is named by a hash of its key (everything it depends on); the JSON beside it
holds that key and the file's sha256, both checked before loading, so a stale or corrupt file is
removed and rebuilt. Both are written to temporary names and renamed, so a reader in another process
never sees half a file."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

CACHE_ENV = "DECODING_COMPILE_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "decoding" / "compiled"


def values_hash(module) -> str:
    """sha256 of every parameter's and buffer's bytes: the identity of a frozen library's constants."""
    h = hashlib.sha256()
    for t in list(module.parameters()) + list(module.buffers()):
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def paths(key: dict) -> tuple[str, Path, Path]:
    """(digest, library file, its JSON) of `key`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    d = cache_dir()
    return digest, d / f"{key['model']}-{digest}.pt2", d / f"{key['model']}-{digest}.json"


def temporary(path: Path) -> Path:
    """Where this process writes `path` before store() renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")


def store(tmp: Path, path: Path, meta: Path, key: dict) -> None:
    """Move a built library from `tmp` to `path`, and write its JSON (key and sha256) beside it."""
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    tmp_meta = temporary(meta)
    tmp_meta.write_text(json.dumps({"key": key, "sha256": sha}, indent=1, sort_keys=True))
    os.replace(tmp_meta, meta)


def load_checked(path: Path, meta: Path, key: dict):
    """The cached library if its JSON matches `key` and its bytes their sha256; else None (and the
    bad files removed)."""
    if not path.exists() or not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        ok = info.get("key") == json.loads(json.dumps(key)) and \
            info.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
        if ok:
            return open_library(path)
    except Exception:
        pass
    for f in (path, meta):  # stale or corrupt: rebuild
        f.unlink(missing_ok=True)
    return None


def open_library(path: Path):
    """The library's loader (boxed_run: a flat list of tensors in, of outputs out). Straight from
    torch._C: importing torch._inductor to load it would cost a second process seconds."""
    try:
        return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except TypeError:  # another torch's signature
        return torch._inductor.aoti_load_package(str(path)).loader

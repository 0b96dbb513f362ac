"""Open a checkpoint lazily: which weight matrices it holds (name, shape, dtype, kind) without reading them, and a
loader that reads one tensor at a time, shard after shard.

Sources (``open_checkpoint``): a ``.safetensors`` file (memory-mapped by safetensors); a folder holding a sharded
Hugging Face checkpoint (``model.safetensors.index.json``, or ``pytorch_model.bin.index.json``) or single files
(``*.safetensors``, ``pytorch_model.bin``); a torch file (``.pt``/``.pth``/``.bin``/``.ckpt``: a ``state_dict``, or a
full checkpoint whose largest nested dict of tensors is taken, e.g. ``{"model": ..., "optimizer": ...}``), read
with ``torch.load(mmap=True, weights_only=True)``; an in-memory ``nn.Module`` or ``{name: tensor}`` dict.

Which tensors count: floating tensors with >= 2 dimensions (>2-D are viewed as (shape[0], -1)); tensors sharing
storage (tied weights) are measured once. Kinds come from ``llr_kernels.layers`` (by name and shape; an
``nn.Module`` is classified with its modules).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from ..layers import classify_parameters

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be analysed; the message says what was wrong and what to do."""


@dataclass
class TensorRef:
    """One weight matrix of a checkpoint, not yet read: ``load()`` returns the tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str
    shard: str
    load: Callable[[], torch.Tensor] = field(repr=False)

    @property
    def n(self) -> int:
        """Eigenvalues of its ESD: min(shape[0], prod(shape[1:]))."""
        rest = 1
        for s in self.shape[1:]:
            rest *= s
        return min(self.shape[0], rest)

    @property
    def numel(self) -> int:
        out = 1
        for s in self.shape:
            out *= s
        return out


@dataclass
class Checkpoint:
    """What ``open_checkpoint`` found: a description, the weight matrices grouped by shard (in file order), and
    the names of the tensors that were left out (1-D, integer, and so on)."""

    source: str
    shards: list[tuple[str, list[TensorRef]]]
    skipped: list[str]

    @property
    def refs(self) -> list[TensorRef]:
        return [r for _, refs in self.shards for r in refs]

    def select(self, pattern: str | None) -> "Checkpoint":
        """Only the matrices whose name matches the regular expression ``pattern`` (re.search)."""
        if not pattern:
            return self
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise CheckpointError(f"layer filter {pattern!r} is not a valid regular expression: {err}") from None
        shards = [(s, [r for r in refs if rx.search(r.name)]) for s, refs in self.shards]
        shards = [(s, refs) for s, refs in shards if refs]
        if not shards:
            names = [r.name for r in self.refs]
            raise CheckpointError(f"layer filter {pattern!r} matches none of the {len(names)} weight matrices of "
                                  f"{self.source}; names look like {names[:3]} (the filter is a regular expression "
                                  "searched in each name)")
        return Checkpoint(self.source, shards, self.skipped)


def open_checkpoint(source: str | Path | nn.Module | Mapping[str, torch.Tensor], *,
                    trust_pickle: bool = False) -> Checkpoint:
    """The weight matrices of ``source`` (module docstring), read lazily. Raises ``CheckpointError`` for a missing,
    corrupt or unknown source and for one without any floating >= 2-D tensor."""
    if isinstance(source, nn.Module):
        ck = _from_module(source)
    elif isinstance(source, Mapping):
        ck = _from_tensors(dict(source), "a dict of tensors", "memory")
    elif isinstance(source, (str, Path)):
        ck = _from_path(Path(source), trust_pickle)
    else:
        raise CheckpointError(f"cannot analyse a {type(source).__name__}: pass a path (.safetensors file, Hugging Face "
                              "model folder, torch checkpoint), an nn.Module or a dict of tensors")
    if not ck.refs:
        left = f" (left out: {ck.skipped[:5]}{' ...' if len(ck.skipped) > 5 else ''})" if ck.skipped else ""
        raise CheckpointError(f"{ck.source} holds no floating tensor with >= 2 dimensions, so there is nothing to "
                              f"measure{left}; spectral metrics need weight matrices")
    return ck


def _from_path(path: Path, trust_pickle: bool) -> Checkpoint:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a .safetensors file, a Hugging Face model folder or a "
                              "torch checkpoint")
    if path.is_dir():
        return _from_folder(path, trust_pickle)
    if path.suffix == ".safetensors":
        return _from_safetensors([path], str(path))
    if path.suffix in TORCH_SUFFIXES:
        return _from_torch_files([path], str(path), trust_pickle)
    if path.name.endswith(".index.json"):
        return _from_folder(path.parent, trust_pickle, index=path)
    raise CheckpointError(f"unknown checkpoint format {path.suffix or path.name!r} ({path}): pass a .safetensors "
                          f"file, a torch file ({', '.join(TORCH_SUFFIXES)}) or a Hugging Face model folder")


def _from_folder(folder: Path, trust_pickle: bool, index: Path | None = None) -> Checkpoint:
    for name, reader in ((SAFETENSORS_INDEX, _from_safetensors), (TORCH_INDEX, None)):
        idx = index if index is not None and index.name == name else folder / name
        if idx.is_file():
            files = _index_files(idx)
            if reader is None:
                return _from_torch_files(files, str(folder), trust_pickle)
            return reader(files, str(folder))
    st = sorted(folder.glob("*.safetensors"))
    if st:
        return _from_safetensors(st, str(folder))
    pt = sorted(p for p in folder.iterdir() if p.suffix in TORCH_SUFFIXES and p.is_file())
    if pt:
        return _from_torch_files(pt, str(folder), trust_pickle)
    raise CheckpointError(f"{folder} holds no checkpoint: expected {SAFETENSORS_INDEX}, *.safetensors, "
                          f"{TORCH_INDEX} or a torch file ({', '.join(TORCH_SUFFIXES)})")


def _index_files(index: Path) -> list[Path]:
    """Shard files of a Hugging Face index, in the order of their first tensor."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid Hugging Face index (a JSON object with a 'weight_map' of "
                              f"tensor name -> shard file): {err!r}") from None
    files = list(dict.fromkeys(weight_map.values()))
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise CheckpointError(f"{index} names shard(s) that are missing from {index.parent}: {missing[:3]}; "
                              "download every shard of the checkpoint")
    return [index.parent / f for f in files]


def _from_safetensors(files: list[Path], source: str) -> Checkpoint:
    from safetensors import safe_open

    shards, skipped = [], []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = [(k, f.get_slice(k)) for k in f.keys()]
                specs = [(k, tuple(s.get_shape()), s.get_dtype()) for k, s in meta]
        except Exception as err:  # safetensors raises its own error type for a corrupt header
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated or "
                                  "corrupt: download it again") from None
        refs = []
        for name, shape, code in specs:
            dtype = _ST_DTYPES.get(code)
            if dtype is None or len(shape) < 2:
                skipped.append(name)
                continue
            refs.append(TensorRef(name, shape, dtype, "", path.name, _safetensors_loader(path, name)))
        shards.append((path.name, refs))
    return _classified(Checkpoint(source, shards, skipped))


def _safetensors_loader(path: Path, name: str) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    return load


def _from_torch_files(files: list[Path], source: str, trust_pickle: bool) -> Checkpoint:
    """Torch files are read one at a time (mmap: the tensors stay on disk until measured)."""
    shards, skipped = [], []
    for path in files:
        state = _torch_state(path, trust_pickle)
        ck = _from_tensors(state, str(path), path.name)
        shards += ck.shards
        skipped += ck.skipped
    return Checkpoint(source, shards, skipped)


def _torch_state(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=not trust_pickle)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # the legacy (pre-zipfile) format cannot be memory-mapped: it is read whole
            obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        text = str(err)
        if "Unsupported global" in text:  # a class or function, not a tensor container
            raise CheckpointError(f"{path} holds pickled Python objects besides tensors, which torch.load refuses "
                                  "with weights_only=True; if you trust the file, pass trust_pickle=True "
                                  "(--trust-pickle)") from None
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln), text.splitlines()[0] if text
                      else "")
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: {detail}); it may "
                              "be truncated or corrupt") from None
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    best = _largest_tensor_dict(obj)
    if best is None:
        raise CheckpointError(f"{path} holds a {type(obj).__name__} without any dict of tensors: expected a state_dict"
                              " or a checkpoint dict such as {'model': state_dict, 'optimizer': ...}")
    return best


def _largest_tensor_dict(obj, depth: int = 0) -> dict[str, torch.Tensor] | None:
    """The nested dict holding the most tensors (a state_dict inside a training checkpoint)."""
    if not isinstance(obj, Mapping) or depth > 4:
        return None
    here = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    best = here if here else None
    for v in obj.values():
        sub = _largest_tensor_dict(v, depth + 1)
        if sub is not None and (best is None or len(sub) > len(best)):
            best = sub
    return best


def _from_tensors(state: dict[str, torch.Tensor], source: str, shard: str) -> Checkpoint:
    refs, skipped, seen = [], [], set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
            skipped.append(name)
            continue
        key = _storage_key(t)
        if key in seen:  # a tied weight: measured under its first name
            skipped.append(name)
            continue
        seen.add(key)
        refs.append(TensorRef(name, tuple(t.shape), t.dtype, "", shard, _held(t)))
    return _classified(Checkpoint(source, [(shard, refs)] if refs else [], skipped))


def _storage_key(t: torch.Tensor) -> tuple:
    try:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    except (RuntimeError, NotImplementedError):  # e.g. meta tensors: no storage to share
        return (id(t),)


def _held(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: t.detach()


def _classified(ck: Checkpoint) -> Checkpoint:
    """Kinds by name and shape (stand-in tensors on the meta device: nothing is read)."""
    refs = ck.refs
    stand_ins = [(r.name, torch.empty(r.shape, device="meta", dtype=torch.float32, requires_grad=True)) for r in refs]
    for r, layer in zip(refs, classify_parameters(stand_ins)):
        r.kind = layer.kind
    return ck


def _from_module(model: nn.Module) -> Checkpoint:
    refs, skipped = [], []
    for layer in classify_parameters(model):
        p = layer.param
        if not p.is_floating_point() or p.dim() < 2:
            skipped.append(layer.name)
            continue
        kind = layer.kind
        if kind == "frozen":  # frozen weights are still weights of the model: classify them as if trainable
            kind = classify_parameters([(layer.name, torch.empty(p.shape, device="meta", requires_grad=True))])[0].kind
        refs.append(TensorRef(layer.name, tuple(p.shape), p.dtype, kind, "module", _held(p)))
    return Checkpoint(f"a {type(model).__name__}", [("module", refs)] if refs else [], skipped)


def iter_refs(ck: Checkpoint) -> Iterator[TensorRef]:
    """Every matrix, shard after shard."""
    for _, refs in ck.shards:
        yield from refs

"""Stream (name, tensor) pairs into size-capped safetensors shards plus ``model.safetensors.index.json``.

Memory does not grow with the shard: each tensor is cast to the target dtype as it arrives and its bytes go
straight to the shard's data file, so the writer holds no tensor after ``add`` returns. A safetensors file
puts its header (names, dtypes, shapes, offsets) in front of the data, and the header is known only once
the shard is complete; the shard is then assembled as header + data by an in-kernel file copy. Shards get
temporary names while the count is unknown and are renamed at the end (``model-00001-of-00003.safetensors``;
a single shard is ``model.safetensors``). The index is written in every case and lists every tensor, so
readers that follow the index and readers that glob both work. safetensors itself reads every file back
in the tests (tests/export/test_writers.py).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlft.errors import ConfigError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """Bytes from "2GB", "500MB", "1.5GiB" or a plain number (decimal units, as transformers' max_shard_size).

    >>> parse_size("2GB"), parse_size("500MB"), parse_size("1KiB"), parse_size(1000)
    (2000000000, 500000000, 1024, 1000)
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        unit = match.group(2).upper() if match else None
        if not match or unit not in _UNITS:
            raise ConfigError(f"--max-shard-size {size!r}: expected a size like 2GB, 500MB or 1GiB")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"--max-shard-size {size!r}: must be positive")
    return value


def human_size(n: int) -> str:
    """Decimal units, as --max-shard-size reads them.

    >>> human_size(4_411_000_000), human_size(980_000), human_size(12)
    ('4.41 GB', '980.0 kB', '12 B')
    """
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} GB" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} B"


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


#: torch dtype -> the safetensors header's name for it.
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
                      torch.float8_e5m2: "F8_E5M2"}


def safetensors_header(entries: dict[str, dict], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the JSON header of a safetensors file, padded with spaces to 8-byte alignment
    (as safetensors pads it, so the data that follows stays aligned for zero-copy loading)."""
    text = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _tensor_bytes_view(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in memory order, without a copy (safetensors stores little-endian data)."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _append_file(destination, source, size: int) -> None:
    """Append the `size` bytes of `source` to `destination` (open binary files), in the kernel where it can."""
    destination.flush()
    copied = 0
    try:
        while copied < size:
            chunk = os.copy_file_range(source.fileno(), destination.fileno(), min(size - copied, 1 << 30))
            if chunk == 0:  # some filesystems answer 0 instead of an error
                break
            copied += chunk
    except OSError as error:  # not across these filesystems, or not on this kernel
        if copied or error.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    if copied == size:
        return
    if copied:
        raise OSError(errno.EIO, f"copied {copied} of {size} bytes into {destination.name}")
    shutil.copyfileobj(source, destination, 16 << 20)


def _write_shard(data_path: Path, path: Path, header: bytes) -> None:
    """Write one shard file: `header`, then the data written so far (the seam tests replace to fill the disk)."""
    with open(path, "wb") as shard, open(data_path, "rb") as data:
        shard.write(header)
        _append_file(shard, data, data_path.stat().st_size)


@dataclass
class ShardReport:
    """What was written: file per tensor, sizes (bytes), for the index and the caller's summary."""

    weight_map: dict[str, str] = field(default_factory=dict)
    shard_bytes: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    total_parameters: int = 0

    @property
    def largest_shard_bytes(self) -> int:
        return max(self.shard_bytes.values(), default=0)


class ShardWriter:
    """Add tensors one by one; ``close()`` writes the last shard, names the shards and writes the index.

    Args:
        out_dir: an existing directory (the export's staging directory).
        max_shard_bytes: a shard holds at most this many tensor bytes, except that a single larger
            tensor gets a shard of its own (as transformers does).
        dtype: floating tensors are cast to it; integer/bool tensors are written unchanged.
    """

    def __init__(self, out_dir: str | Path, *, max_shard_bytes: int, dtype: torch.dtype | None,
                 metadata: dict[str, str] | None = None):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors files are little-endian; this machine is not")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = int(max_shard_bytes)
        self.dtype = dtype
        self.metadata = {"format": "pt", **(metadata or {})}
        self._entries: dict[str, dict] = {}  # the open shard's header entries, in data order
        self._data = None                    # the open shard's data file
        self._data_bytes = 0
        self._parts: list[tuple[Path, list[str], int]] = []  # (temporary file, names, bytes)
        self._seen: set[str] = set()
        self._parameters = 0
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write `tensor` (cast) to the open shard, or to a new one if it would overflow; keeps no reference."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if name in self._seen:
            raise ValueError(f"tensor {name!r} written twice")
        tensor = tensor.detach()
        if self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype:
            tensor = tensor.to(self.dtype)
        tensor = tensor.to("cpu").contiguous()
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r}: safetensors has no dtype {tensor.dtype}")
        size = tensor_bytes(tensor)
        if self._entries and self._data_bytes + size > self.max_shard_bytes:
            self._flush()
        if self._data is None:
            self._data = open(self._data_path(len(self._parts) + 1), "wb")
        self._data.write(_tensor_bytes_view(tensor))
        self._entries[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                               "data_offsets": [self._data_bytes, self._data_bytes + size]}
        self._data_bytes += size
        self._seen.add(name)
        self._parameters += tensor.numel()

    def add_all(self, items: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in items:
            self.add(name, tensor)

    def _data_path(self, number: int) -> Path:
        return self.out_dir / f".shard-{number:05d}.data"

    def _flush(self) -> None:
        if not self._entries:
            return
        number = len(self._parts) + 1
        self._data.close()
        path = self.out_dir / f".shard-{number:05d}.safetensors"
        _write_shard(self._data_path(number), path, safetensors_header(self._entries, self.metadata))
        self._data_path(number).unlink()
        self._parts.append((path, list(self._entries), self._data_bytes))
        self._entries, self._data, self._data_bytes = {}, None, 0

    def close(self) -> ShardReport:
        """Write the last shard, give every shard its final name, write the index."""
        self._flush()
        self._closed = True
        if not self._parts:
            raise ValueError("no tensors were written")
        count = len(self._parts)
        report = ShardReport()
        for i, (path, names, size) in enumerate(self._parts, start=1):
            final = SINGLE_NAME if count == 1 else f"model-{i:05d}-of-{count:05d}.safetensors"
            path.rename(self.out_dir / final)
            report.shard_bytes[final] = size
            report.total_bytes += size
            report.weight_map.update(dict.fromkeys(names, final))
        report.total_parameters = self._parameters
        index = {"metadata": {"total_size": report.total_bytes, "total_parameters": report.total_parameters},
                 "weight_map": dict(sorted(report.weight_map.items()))}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return report


def write_sharded(items: Iterable[tuple[str, torch.Tensor]], out_dir: str | Path, *, dtype: str | None,
                  max_shard_size: str | int = "5GB", metadata: dict[str, str] | None = None) -> ShardReport:
    """Stream ``items`` into ``out_dir`` as shards of at most ``max_shard_size``; returns what was written."""
    writer = ShardWriter(out_dir, max_shard_bytes=parse_size(max_shard_size),
                         dtype=None if dtype is None else torch_dtype(dtype), metadata=metadata)
    writer.add_all(items)
    return writer.close()


def iter_safetensors_dir(path: str | Path):
    """(name, tensor) of every tensor in a directory's shards, one shard open at a time, shard by shard."""
    from safetensors import safe_open

    path = Path(path)
    index = path / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(path.glob("*.safetensors"))]
    for file in files:
        with safe_open(str(path / file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)

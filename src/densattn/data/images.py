"""Image decoding to ``uint8`` RGB ``(H, W, 3)`` arrays, and the idx(.gz) reader for (Fashion-)MNIST files."""

from __future__ import annotations

import gzip
import os

import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Convert a grey ``(H, W)``, grey+alpha ``(H, W, 2)``, RGB or RGBA array to ``uint8`` RGB ``(H, W, 3)``.

    Alpha is composited onto white. Float input is taken to be in [0, 1].

    Example:
        >>> to_rgb_uint8(np.zeros((28, 28), dtype=np.uint8)).shape
        (28, 28, 3)
    """
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)  # (H, W, 3)
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 1|2|3|4).")
    if arr.shape[2] in (2, 4):
        colour, alpha = arr[:, :, :-1].astype(np.float32), arr[:, :, -1:].astype(np.float32) / 255.0
        arr = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)  # (H, W, 3)
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file (first frame of a GIF) to ``uint8`` RGB ``(H, W, 3)``; transparency onto white.

    Raises ``ValueError`` naming the file when it is missing or undecodable.
    """
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as img:
            img.seek(0)
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = np.asarray(img.convert("RGBA"))
                return to_rgb_uint8(rgba)
            return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except Exception as err:  # PIL raises UnidentifiedImageError/OSError/SyntaxError on corrupt files
        raise ValueError(
            f"cannot decode image file {os.fspath(path)!r} ({type(err).__name__}: {err}); "
            f"replace or delete the file (readable formats: {', '.join(IMAGE_EXTENSIONS)})."
        ) from err


def check_image_file(path: str | os.PathLike) -> None:
    """Read only the header of ``path``; raise ``ValueError`` naming the file if it is not an image."""
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as img:
            img.verify()
    except Exception as err:
        raise ValueError(
            f"unreadable image file {os.fspath(path)!r} ({type(err).__name__}: {err}); "
            f"replace or delete the file (readable formats: {', '.join(IMAGE_EXTENSIONS)})."
        ) from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (gzip-compressed or not) as used by MNIST and Fashion-MNIST.

    Layout: two zero bytes, a type code (0x08 = uint8), the number of dimensions, each dimension as a
    big-endian uint32, then the data in C order.

    Example:
        >>> import tempfile, struct
        >>> f = tempfile.NamedTemporaryFile(suffix=".idx", delete=False).name
        >>> _ = open(f, "wb").write(struct.pack(">HBBI", 0, 8, 1, 3) + bytes([1, 2, 3]))
        >>> read_idx(f).tolist()
        [1, 2, 3]
    """
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(os.fspath(path), "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{os.fspath(path)!r} is not a uint8 idx file; reinstall the package that provides it.")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{os.fspath(path)!r} is truncated ({data.size} bytes for shape {shape}); reinstall it.")
    return data.reshape(shape)

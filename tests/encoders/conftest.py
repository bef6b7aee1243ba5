"""Session-scoped bundled encoders (each loaded once) and small real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from densattn.encoders import get_encoder
from densattn.encoders.inputs import to_waveform

ASTERISK = Path("/usr/share/asterisk/sounds/en")


@pytest.fixture(scope="session")
def minilm():
    return get_encoder("minilm")


@pytest.fixture(scope="session")
def whisper():
    return get_encoder("whisper-tiny")


@pytest.fixture(scope="session")
def efficientnet():
    return get_encoder("efficientnet-lite0")


@pytest.fixture(scope="session")
def prompts() -> dict[str, np.ndarray]:
    """A few Asterisk prompts (one professional speaker) at 16 kHz; skipped when the package is absent."""
    names = ["hello-world", "goodbye", "digits/1", "digits/7"]
    if not all((ASTERISK / f"{n}.wav").is_file() for n in names):
        pytest.skip("needs Debian asterisk-core-sounds-en-wav")
    return {n: to_waveform(ASTERISK / f"{n}.wav", 16000) for n in names}

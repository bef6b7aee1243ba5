"""The fault tests' session fixture: a feature cache filled once, so every run of the tiny task reads it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fortunes_cache(tmp_path_factory) -> Path:
    """A feature cache holding MiniLM features of the tiny task (60 fortunes; extracted once per session)."""
    from densattn.pipeline import task_features

    cache = tmp_path_factory.mktemp("fault-cache")
    try:
        task_features("fortunes", "minilm", max_samples=60, seed=0, cache_dir=cache)
    except ValueError as err:  # the Debian fortunes package is missing
        pytest.skip(str(err))
    return cache

"""Ready-made experiments: :mod:`densattn.experiments.demo` (``make demo``, the main job on its embedded default)."""

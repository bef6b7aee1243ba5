"""A trained run seen the way layer explanations need it: a function of per-layer features ``(N, L, d)``.

:class:`ExplainableRun` opens any run directory through :func:`densattn.load_adapter` and exposes

* ``features (N, L, d)``, ``labels (N,)`` of the whole dataset the run was trained on (rebuilt from its
  ``config.json`` through the feature cache, with a dataset-fingerprint check);
* :meth:`~ExplainableRun.model` — fold ``k``'s best adapter as a module ``(B, L, d) -> logits (B, C)``;
* :meth:`~ExplainableRun.indices` — fold ``k``'s ``train``/``val``/``test`` split exactly as training drew it;
* :meth:`~ExplainableRun.baseline` — the training-split mean of every (layer, feature): what "removing" a layer
  replaces it by. Every head standardises its input with exactly these training statistics (``input_norm``), so
  the baseline is the input the head sees as all zeros.

Adapter kinds: ``head`` (every head type: ``daam``, ``gqdaam``, ``mha``, ``mha_bn``, ``conv``, ``pool``,
``linear``) and ``fusion`` (its M encoders' layers are stacked into one layer axis, each zero-padded to the widest
feature size; see :class:`FusionLayers`). End-to-end runs (``lora``, ``ia3``, ``daam_peft``) tune the encoder itself
and have no per-layer features of a frozen encoder, so they are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.data.cache import FeatureSet

__all__ = [
    "END_TO_END_TYPES",
    "ExplainableRun",
    "FusionLayers",
    "adapter_dir",
    "features_for_run",
    "read_run_config",
    "run_split_indices",
]

#: adapter types that tune the encoder end to end (no cached per-layer features to explain)
END_TO_END_TYPES = ("lora", "ia3", "daam_peft")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.json``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory.

    Example:
        >>> import json, tempfile
        >>> with tempfile.TemporaryDirectory() as run:
        ...     _ = (Path(run) / "config.json").write_text(json.dumps({"method": "daam", "folds": 5}))
        ...     read_run_config(run)
        {'method': 'daam', 'folds': 5}
        >>> read_run_config("/nonexistent/run")
        Traceback (most recent call last):
        ...
        FileNotFoundError: /nonexistent/run has no config.json; is it a run directory written by `densattn train`?
    """
    from densattn.io import read_json

    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no config.json; is it a run directory written by `densattn train`?")
    return read_json(path)


def adapter_dir(run_dir: str | Path, fold: int = 0) -> Path:
    """Where fold ``fold``'s best adapter is saved (``RUN/folds/K/adapter``; fold 0's is also ``RUN`` itself).

    Raises:
        FileNotFoundError: the fold has no saved adapter (unfinished, or no such fold).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     run = Path(folder)
        ...     (run / "folds" / "1" / "adapter").mkdir(parents=True)
        ...     _ = (run / "adapter_config.json").write_text("{}")  # fold 0's adapter at the top level
        ...     adapter_dir(run, 1).relative_to(run).as_posix(), adapter_dir(run, 0) == run
        ('folds/1/adapter', True)
        >>> adapter_dir("/nonexistent/run", 2)
        Traceback (most recent call last):
        ...
        FileNotFoundError: /nonexistent/run/folds/2/adapter does not exist: fold 2 of /nonexistent/run is unfinished ...
    """
    run_dir = Path(run_dir)
    path = run_dir / "folds" / str(fold) / "adapter"
    if path.is_dir():
        return path
    if fold == 0 and (run_dir / "adapter_config.json").exists():
        return run_dir
    raise FileNotFoundError(f"{path} does not exist: fold {fold} of {run_dir} is unfinished or does not exist")


def features_for_run(run_dir: str | Path, cache_dir: str | Path | None = None) -> FeatureSet:
    """Rebuild a head run's :class:`FeatureSet` from its ``config.json`` (data, max_samples, seed, encoder) through
    the feature cache, checking that the dataset is the one the run was trained on (same fingerprint).

    Raises:
        ValueError: the config records no encoder or data spec, or the data changed since the run.

    Example:
        A run trained on 6 debate statements with MiniLM needs only its ``config.json`` to rebuild its features:

        >>> import json, tempfile
        >>> from densattn.pipeline import load_task
        >>> options = {"max_length": 32}
        >>> dataset, _, info = load_task("debates-party", "minilm", max_samples=6, seed=2, encoder_options=options)
        >>> config = {"data": "debates-party", "max_samples": 6, "train": {"seed": 2}, "encoder": info,
        ...           "feature_cache": {"dataset_fingerprint": dataset.fingerprint()}}
        >>> with tempfile.TemporaryDirectory() as run, tempfile.TemporaryDirectory() as cache:
        ...     _ = (Path(run) / "config.json").write_text(json.dumps(config))
        ...     features = features_for_run(run, cache_dir=cache)
        >>> features.features.shape, features.ids == dataset.ids
        (torch.Size([6, 7, 384]), True)
    """
    from densattn.data.cache import cached_features
    from densattn.encoders import load_recorded_encoder
    from densattn.pipeline import run_dataset

    config = read_run_config(run_dir)
    if not config.get("encoder", {}).get("name"):
        raise ValueError(f"{run_dir}/config.json records no encoder name; pass the features directly")
    dataset = run_dataset(config)
    return cached_features(load_recorded_encoder(config["encoder"]), dataset, cache_dir=cache_dir)


def _fusion_feature_sets(config: dict[str, Any], cache_dir: str | Path | None) -> list[FeatureSet]:
    from densattn.data.cache import align_feature_sets, cached_features
    from densattn.encoders import load_recorded_encoder
    from densattn.pipeline import run_dataset

    recorded = [c.get("dataset_fingerprint") for c in config.get("feature_caches") or []]
    dataset = run_dataset({**config, "feature_cache": {"dataset_fingerprint": recorded[0] if recorded else None}})
    return align_feature_sets(
        [cached_features(load_recorded_encoder(info), dataset, cache_dir=cache_dir) for info in config["encoders"]]
    )


def run_split_indices(config: dict[str, Any], labels: Tensor, *, split: str, fold: int = 0, groups=None) -> np.ndarray:
    """Indices of fold ``fold``'s ``"train"``, ``"val"`` or ``"test"`` split, exactly as the run drew them
    (:func:`densattn.train.runner.make_folds` on the run's config).

    Raises:
        ValueError: an unknown ``split`` or a fold the run does not have.

    Example:
        >>> from densattn.train import TrainConfig
        >>> config, labels = {"folds": 3, "train": TrainConfig(seed=1).to_dict()}, torch.arange(30) % 3
        >>> parts = {s: run_split_indices(config, labels, split=s, fold=2) for s in ("train", "val", "test")}
        >>> {s: len(v) for s, v in parts.items()}, set(parts["train"]).isdisjoint(parts["test"])
        ({'train': 17, 'val': 3, 'test': 10}, True)
        >>> run_split_indices(config, labels, split="test", fold=3)
        Traceback (most recent call last):
        ...
        ValueError: fold 3 does not exist; the run has 3 folds (0..2)
    """
    from densattn.train import TrainConfig, make_folds

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    folds = make_folds(labels, folds=config["folds"], config=TrainConfig.from_dict(config["train"]), groups=groups)
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} does not exist; the run has {len(folds)} folds (0..{len(folds) - 1})")
    return getattr(folds[fold], split)


class FusionLayers(nn.Module):
    """A :class:`~densattn.adapters.FusionAdapter` as a function of stacked layers ``(B, sum_m L_m, d_max)``.

    Modality m's ``(B, L_m, d_m)`` features occupy layers ``sum_{m' < m} L_m' ...`` of the stack, zero-padded to
    ``d_max`` features; :meth:`stack` builds that tensor and :meth:`forward` cuts the padding off again.

    Example:
        >>> from densattn.adapters import FusionAdapter
        >>> adapter = FusionAdapter([(3, 8), (2, 4)], ["a", "b"]).eval()
        >>> parts = [torch.randn(5, 3, 8), torch.randn(5, 2, 4)]
        >>> stacked = FusionLayers.stack(parts)  # (5, 5, 8)
        >>> torch.equal(FusionLayers(adapter)(stacked), adapter(FusionAdapter.pack(parts)))
        True
    """

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        self.shapes = list(adapter.shapes)

    @staticmethod
    def stack(parts: Sequence[Tensor]) -> Tensor:
        """``[(B, L_m, d_m)]`` -> ``(B, sum_m L_m, max_m d_m)`` (zero padding on the right)."""
        width = max(p.shape[-1] for p in parts)
        return torch.cat([nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of the adapter for stacked layers ``x (B, sum_m L_m, d_max)``."""
        parts, start = [], 0
        for n, d in self.shapes:
            parts.append(x[:, start : start + n, :d])  # (B, L_m, d_m)
            start += n
        return self.adapter(torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=-1))


def _refuse_end_to_end(run_dir: Path, kind: str) -> None:
    if kind in END_TO_END_TYPES:
        raise ValueError(
            f"{run_dir} is an end-to-end {kind!r} run: the encoder itself was tuned, so there are no per-layer "
            "features of a frozen encoder to attribute. Layer explanations work on heads and fusion heads trained "
            "on cached features (densattn train --head ... or --fusion ...)"
        )


class ExplainableRun:
    """A head or fusion run as a function of per-layer features, with its data, folds and baseline.

    Args:
        run_dir: a run directory written by ``densattn train`` (or :func:`densattn.train.run_experiment`).
        features: the run's features, to skip rebuilding them: a :class:`FeatureSet` for a head run, the M
            feature sets (in the run's encoder order) for a fusion run.
        cache_dir: feature cache root the features are read from (or extracted into).

    Raises:
        ValueError: an end-to-end run (LoRA, IA3, DAAM inside the encoder), or features that do not match the run.
        FileNotFoundError: not a run directory, or fold 0 is unfinished.

    Example:
        >>> import tempfile
        >>> from densattn.train import TrainConfig, run_experiment
        >>> fs = FeatureSet(torch.randn(40, 4, 6), torch.arange(40) % 2, ["a", "b"], [str(i) for i in range(40)])
        >>> out = tempfile.mkdtemp()
        >>> _ = run_experiment(fs, head="conv", out=out, folds=2, plots=False, train_config=TrainConfig(epochs=1))
        >>> run = ExplainableRun(out, features=fs)
        >>> x, y = run.data("val", fold=1)
        >>> run.model(1)(x).shape == (len(y), 2), run.baseline(1).shape
        (True, torch.Size([4, 6]))
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        features: FeatureSet | Sequence[FeatureSet] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        from densattn.adapters import DensityAdapterModel, FusionAdapter, adapter_type, load_adapter

        self.run = Path(run_dir)
        self.config = read_run_config(self.run)
        first = adapter_dir(self.run, 0)
        kind = adapter_type(first)
        _refuse_end_to_end(self.run, kind)
        adapter = load_adapter(first)
        if isinstance(adapter, DensityAdapterModel):
            self.kind, self.name = "head", adapter.head_type
            self.layer_names = [f"L{i}" for i in range(adapter.num_layers)]
        elif isinstance(adapter, FusionAdapter):
            self.kind, self.name = "fusion", f"fusion-{adapter.method}"
            names = [str(info.get("name") or f"m{m}") for m, info in enumerate(adapter.encoders)]
            tags = [n if names.count(n) == 1 else f"{n}[{m}]" for m, n in enumerate(names)]
            self.layer_names = [f"{tag}:L{i}" for tag, (n, _) in zip(tags, adapter.shapes) for i in range(n)]
        else:  # a type registered later that this code does not know how to see as layers
            raise ValueError(
                f"{self.run} holds a {kind!r} adapter ({type(adapter).__name__}); layer explanations support head "
                "and fusion runs"
            )
        self._adapters: dict[int, nn.Module] = {0: adapter}
        self._given, self._cache_dir = features, cache_dir
        self._data: tuple[Tensor, Tensor, list[str] | None] | None = None

    def _load(self) -> tuple[Tensor, Tensor, list[str] | None]:
        """The features (loaded on first use, so a wrong method fails before any extraction)."""
        if self._data is not None:
            return self._data
        adapter = self._adapters[0]
        if self.kind == "head":
            fs = self._given if self._given is not None else features_for_run(self.run, cache_dir=self._cache_dir)
            if not isinstance(fs, FeatureSet):
                raise ValueError(f"features: a head run takes one FeatureSet, got {type(fs).__name__}")
            if (fs.num_layers, fs.dim) != (adapter.num_layers, adapter.dim) or list(fs.classes) != adapter.classes:
                raise ValueError(
                    f"features ({fs.num_layers}x{fs.dim}, classes {fs.classes}) do not match the run's adapter "
                    f"({adapter.num_layers}x{adapter.dim}, classes {adapter.classes})"
                )
            self._given = fs
            data = (fs.features, fs.labels, fs.groups)
        else:
            given = self._given
            sets = list(given) if given is not None else _fusion_feature_sets(self.config, self._cache_dir)
            shapes = [(fs.num_layers, fs.dim) for fs in sets]
            if shapes != adapter.shapes or any(list(fs.classes) != adapter.classes for fs in sets):
                raise ValueError(f"features have shapes {shapes}; the run's fusion adapter reads {adapter.shapes}")
            data = (FusionLayers.stack([fs.features for fs in sets]), sets[0].labels, sets[0].groups)
        expected = self.config.get("num_examples", len(data[0]))
        if len(data[0]) != expected:
            raise ValueError(f"features hold {len(data[0])} examples but the run used {expected}")
        self._data = data
        return data

    def feature_set(self) -> FeatureSet:
        """A head run's :class:`FeatureSet` (ids, manifest and all), e.g. to retrain on some of its layers.

        Raises:
            ValueError: a fusion run (several feature sets).
        """
        if self.kind != "head":
            raise ValueError(f"{self.run} is a {self.name} run: its features are several feature sets, not one")
        self._load()
        return self._given

    @property
    def features(self) -> Tensor:
        """``(N, L, d)`` features of every example (for fusion: the encoders' layers stacked, zero-padded)."""
        return self._load()[0]

    @property
    def labels(self) -> Tensor:
        """``(N,)`` labels."""
        return self._load()[1]

    @property
    def groups(self) -> list[str] | None:
        """Group of every example (leave-one-group-out folds), or None."""
        return self._load()[2]

    @property
    def num_layers(self) -> int:
        """``L``: layers of the layer axis (for fusion: of all encoders together)."""
        return len(self.layer_names)

    @property
    def num_folds(self) -> int:
        """How many folds the run has (finished or not)."""
        from densattn.train import TrainConfig, make_folds

        config = TrainConfig.from_dict(self.config["train"])
        return len(make_folds(self.labels, folds=self.config["folds"], config=config, groups=self.groups))

    def adapter(self, fold: int = 0) -> nn.Module:
        """Fold ``fold``'s best adapter, as :func:`densattn.load_adapter` opens it (eval mode, frozen)."""
        if fold not in self._adapters:
            from densattn.adapters import load_adapter

            self._adapters[fold] = load_adapter(adapter_dir(self.run, fold))
        return self._adapters[fold]

    def model(self, fold: int = 0) -> nn.Module:
        """Fold ``fold``'s adapter as a module ``(B, L, d) -> logits (B, C)`` on :attr:`features` rows."""
        adapter = self.adapter(fold)
        return FusionLayers(adapter).eval() if self.kind == "fusion" else adapter

    def indices(self, split: str, fold: int = 0) -> np.ndarray:
        """Fold ``fold``'s ``"train"``/``"val"``/``"test"`` indices into :attr:`features`, as training drew them."""
        return run_split_indices(self.config, self.labels, split=split, fold=fold, groups=self.groups)

    def data(self, split: str, fold: int = 0) -> tuple[Tensor, Tensor]:
        """``(x (n, L, d), y (n,))`` of fold ``fold``'s ``split``."""
        idx = torch.as_tensor(self.indices(split, fold), dtype=torch.long)
        return self.features[idx], self.labels[idx]

    def baseline(self, fold: int = 0) -> Tensor:
        """Training-split mean ``(L, d)`` of fold ``fold``: the value a removed layer is replaced by."""
        return self.data("train", fold)[0].double().mean(0).float()

    def feature_mask(self) -> Tensor:
        """``(L, d)`` bool, True where a feature varies over the data set (constant entries are padding)."""
        from densattn.analysis.importance import real_features

        return real_features(self.features)

"""Methods on cached features for the fold runner: a head (:class:`HeadMethod`) and a fusion head
(:class:`FusionMethod`), with their library entry points :func:`run_experiment` and :func:`run_fusion_experiment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.adapters.fusion import FusionAdapter
from densattn.adapters.head import DensityAdapterModel
from densattn.data.cache import FeatureSet, align_feature_sets
from densattn.heads import FUSION_METHODS, build_head
from densattn.train.inputs import Inputs
from densattn.train.loop import predict_logits
from densattn.train.runner import Fold, Method, run_folds

__all__ = ["FusionMethod", "HeadMethod", "run_experiment", "run_fusion_experiment"]


def _cache_identity(features: FeatureSet) -> dict[str, Any]:
    return {k: features.manifest.get(k) for k in ("dataset", "dataset_fingerprint", "dtype")}


class HeadMethod(Method):
    """A head (``daam``, ``gqdaam``, ``mha``, ``mha_bn``, ``conv``, ``pool``, ``linear``) on cached features.

    The options are validated (and their defaults resolved) at construction, before anything is trained or written.

    Example:
        >>> fs = FeatureSet(torch.randn(6, 4, 8), torch.tensor([0, 1] * 3), ["a", "b"], list("uvwxyz"))
        >>> method = HeadMethod(fs, "daam", {"num_heads": 2})
        >>> method.name, method.head_options["num_heads"], method.build(0)(fs.features).shape
        ('daam', 2, torch.Size([6, 2]))
        >>> method.inputs(np.array([0, 5])).data.shape
        torch.Size([2, 4, 8])
        >>> HeadMethod(fs, "daam", {"colour": "red"})
        Traceback (most recent call last):
        ...
        ValueError: option(s) ['colour'] do not apply to the 'daam' head; it accepts [...]
    """

    kind = "head"

    def __init__(
        self,
        features: FeatureSet,
        head: str,
        head_options: dict[str, Any] | None = None,
        encoder_info: dict[str, Any] | None = None,
    ) -> None:
        self.features, self.head = features, head
        self.labels, self.classes, self.groups = features.labels, list(features.classes), features.groups
        self.name = head
        if encoder_info is None and isinstance(features.manifest.get("encoder"), dict):
            encoder_info = dict(features.manifest["encoder"])  # the cache's encoder identity
        self.encoder_info = dict(encoder_info or {})
        dry = build_head(head, features.num_layers, features.dim, len(self.classes), **dict(head_options or {}))
        self.head_options = dry.get_options()

    def describe(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "head_options": self.head_options,
            "num_layers": self.features.num_layers,
            "dim": self.features.dim,
            "encoder": self.encoder_info,
            "feature_cache": _cache_identity(self.features),
        }

    def build(self, seed: int) -> DensityAdapterModel:
        return DensityAdapterModel(
            self.head,
            num_layers=self.features.num_layers,
            dim=self.features.dim,
            classes=self.classes,
            head_options=self.head_options,
            encoder=self.encoder_info,
        )

    def prepare(self, model: nn.Module, fold: Fold) -> None:
        model.head.set_input_stats(self.features.features[fold.train])

    def inputs(self, index: np.ndarray) -> Inputs:
        return Inputs(self.features.features[torch.as_tensor(index, dtype=torch.long)])

    def finalize(self, model: nn.Module, fold: Fold) -> None:
        head = model.head
        if getattr(head, "selecting", False):  # a linear probe per layer: keep the best on validation
            logits = predict_logits(model, self.inputs(fold.val))  # (N, L, C)
            y = self.labels[torch.as_tensor(fold.val)]
            head.select_layer(int((logits.argmax(-1) == y[:, None]).float().mean(0).argmax()))

    def fold_extras(self, model: nn.Module, initial_state: dict[str, Tensor]) -> dict[str, Any]:
        from densattn.analysis.daam_report import daam_parameter_report

        report = daam_parameter_report(model.head, {k[len("head.") :]: v for k, v in initial_state.items()})
        extras: dict[str, Any] = {"daam_parameters": report} if report["modules"] else {}
        if self.head == "linear":
            extras["selected_layer"] = int(model.head.selected)
        return extras

    def frozen_params(self) -> int | None:
        return self.encoder_info.get("frozen_params")


class FusionMethod(Method):
    """A fusion head over M >= 2 feature sets of the same examples (aligned by example id).

    Shapes:
        set m holds ``(N, L_m, d_m)``; :meth:`inputs` packs them into ``(n, sum_m L_m d_m)``
        (:meth:`~densattn.adapters.FusionAdapter.pack`).

    Example:
        >>> ids, y = ["a", "b", "c", "d"], torch.tensor([0, 1, 0, 1])
        >>> text = FeatureSet(torch.randn(4, 2, 3), y, ["neg", "pos"], ids)
        >>> audio = FeatureSet(torch.randn(4, 1, 5), y[[3, 2, 1, 0]], ["neg", "pos"], ids[::-1])  # other order
        >>> method = FusionMethod([text, audio], "concat")
        >>> method.name, method.shapes, method.inputs(np.array([0, 1])).data.shape
        ('fusion-concat', [(2, 3), (1, 5)], torch.Size([2, 11]))
        >>> method.build(0)(method.packed).shape
        torch.Size([4, 2])
    """

    kind = "fusion"

    def __init__(
        self,
        feature_sets: Sequence[FeatureSet],
        method: str,
        fusion_options: dict[str, Any] | None = None,
        encoder_infos: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        if method not in FUSION_METHODS:
            raise ValueError(f"fusion method must be one of {FUSION_METHODS}; got {method!r}")
        self.sets = align_feature_sets(feature_sets)
        if method == "ban" and len(self.sets) != 2:
            raise ValueError(f"fusion 'ban' fuses exactly two feature sets; got {len(self.sets)}")
        self.method, self.fusion_options = method, dict(fusion_options or {})
        self.infos = [dict(i) for i in (encoder_infos or [{} for _ in self.sets])]
        if len(self.infos) != len(self.sets):
            raise ValueError(
                f"encoder_infos must give one entry per feature set ({len(self.sets)}); got {len(self.infos)}"
            )
        first = self.sets[0]
        self.labels, self.classes, self.groups = first.labels, list(first.classes), first.groups
        self.name = f"fusion-{method}"
        self.shapes = [(fs.num_layers, fs.dim) for fs in self.sets]
        self.packed = FusionAdapter.pack([fs.features for fs in self.sets])  # (N, sum_m L_m * d_m)
        self.build(0)  # validates the options before any work

    def describe(self) -> dict[str, Any]:
        return {
            "fusion": self.method,
            "fusion_options": self.fusion_options,
            "shapes": [list(s) for s in self.shapes],
            "encoders": self.infos,
            "feature_caches": [_cache_identity(fs) for fs in self.sets],
        }

    def build(self, seed: int) -> FusionAdapter:
        return FusionAdapter(
            self.shapes,
            self.classes,
            method=self.method,
            fusion_options=self.fusion_options,
            encoders=self.infos,
            seed=seed,
        )

    def inputs(self, index: np.ndarray) -> Inputs:
        return Inputs(self.packed[torch.as_tensor(index, dtype=torch.long)])

    def frozen_params(self) -> int | None:
        frozen = [info.get("frozen_params") for info in self.infos]
        return sum(frozen) if frozen and None not in frozen else None


def run_experiment(
    features: FeatureSet,
    *,
    head: str,
    head_options: dict[str, Any] | None = None,
    encoder_info: dict[str, Any] | None = None,
    **run_options: Any,
) -> dict[str, Any]:
    """Train ``head`` on every fold of ``features`` and write the run directory ``out``.

    Args:
        features: cached features (:class:`~densattn.data.cache.FeatureSet`).
        head: ``daam``, ``gqdaam``, ``mha``, ``mha_bn``, ``conv``, ``pool`` or ``linear``.
        head_options: options of the head (e.g. ``preset``, ``num_heads``); unknown or inapplicable ones raise.
        encoder_info: identity of the encoder (default: the one recorded in the feature cache).
        **run_options: ``out`` (required), ``train_config``, ``folds``, ``resume``, ``progress``, ``extra_config``,
            ``plots``, ``search`` (training settings tuned per fold on validation, e.g. ``{"lr": [1e-3, 3e-3]}``):
            see :func:`~densattn.train.run_folds`.

    Returns:
        The metrics dict written to ``metrics.json``.

    Example:
        >>> import tempfile, torch
        >>> from densattn.train import TrainConfig
        >>> fs = FeatureSet(torch.randn(40, 4, 6), torch.arange(40) % 2, ["a", "b"], [str(i) for i in range(40)])
        >>> m = run_experiment(fs, head="conv", out=tempfile.mkdtemp(), folds=2, plots=False,
        ...                    train_config=TrainConfig(epochs=2))
        >>> m["num_folds"], m["method"]
        (2, 'conv')
    """
    return run_folds(HeadMethod(features, head, head_options, encoder_info), **run_options)


def run_fusion_experiment(
    feature_sets: Sequence[FeatureSet],
    *,
    method: str,
    fusion_options: dict[str, Any] | None = None,
    encoder_infos: Sequence[dict[str, Any]] | None = None,
    **run_options: Any,
) -> dict[str, Any]:
    """Train a fusion head (``"concat"``, ``"ban"`` or ``"man"``) on every fold of the aligned feature sets.

    Folds, validation carving, seeds and the training loop are those of :func:`run_experiment`, so a fusion run
    and a head run on the same data are directly comparable. Groups (for ``folds="logo"``) come from the first set.
    ``run_options`` are those of :func:`~densattn.train.run_folds` (``out`` required).

    Example:
        >>> import tempfile
        >>> from densattn.train import TrainConfig
        >>> ids, y = [str(i) for i in range(30)], torch.arange(30) % 2
        >>> sets = [FeatureSet(torch.randn(30, n, d), y, ["a", "b"], ids) for n, d in [(2, 4), (3, 2)]]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     m = run_fusion_experiment(sets, method="ban", out=folder, folds=2, plots=False,
        ...                               train_config=TrainConfig(epochs=1))
        >>> m["method"], m["num_folds"], len(m["classes"])
        ('fusion-ban', 2, 2)
    """
    return run_folds(FusionMethod(feature_sets, method, fusion_options, encoder_infos), **run_options)

"""The GPU path: a head and a LoRA fold train on CUDA with mixed precision and give finite results, extraction on
CUDA matches the CPU, inputs that fit live on the GPU, and a training step (batch, forward, loss, backward) makes no
host-device synchronisation. Skipped where CUDA is absent (``scripts/gpu_check.sh`` runs them on a GPU machine)."""

from __future__ import annotations

import math

import pytest
import torch

from densattn.adapters import LoraTuner, PeftClassifier
from densattn.data.cache import FeatureSet, cached_features
from densattn.encoders import get_encoder
from densattn.heads import build_head
from densattn.train import Inputs, TrainConfig, run_experiment
from densattn.train.end_to_end import run_end_to_end_experiment
from densattn.train.metrics import classification_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def _features() -> FeatureSet:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    x = torch.randn(90, 4, 16, generator=g) + labels[:, None, None].float()
    return FeatureSet(x, labels, ["a", "b", "c"], [str(i) for i in range(90)])


def test_head_trains_on_cuda_with_amp_and_finite_results(tmp_path):
    config = TrainConfig(epochs=5, batch_size=16, device="cuda", amp=True)
    metrics = run_experiment(_features(), head="daam", out=tmp_path / "run", folds=2, train_config=config, plots=False)
    assert math.isfinite(metrics["accuracy_mean"]) and metrics["accuracy_mean"] > 0.5
    for fold in metrics["folds"]:
        assert math.isfinite(fold["best_val_accuracy"])


def test_lora_fold_trains_on_cuda_with_amp(tiny_bert_dir, tiny_texts, tmp_path):
    encoder = get_encoder(tiny_bert_dir, max_length=16, device="cuda")
    config = TrainConfig(epochs=2, batch_size=8, lr=5e-3, device="cuda", amp=True)
    metrics = run_end_to_end_experiment(
        encoder,
        list(tiny_texts.items),
        tiny_texts.labels,
        tiny_texts.classes,
        method="lora",
        tuner_options={"rank": 2, "alpha": 4.0},
        out=tmp_path / "lora",
        folds=1,
        train_config=config,
        plots=False,
    )
    fold = metrics["folds"][0]
    assert math.isfinite(fold["accuracy"]) and all(math.isfinite(v) for v in metrics["per_class_f1_mean"].values())


def test_extraction_on_cuda_matches_the_cpu(tiny_bert_dir, tiny_texts, tmp_path):
    cpu = cached_features(get_encoder(tiny_bert_dir, max_length=16), tiny_texts, cache_dir=tmp_path / "cpu")
    gpu_encoder = get_encoder(tiny_bert_dir, max_length=16, device="cuda")
    gpu = cached_features(gpu_encoder, tiny_texts, cache_dir=tmp_path / "gpu")
    assert gpu.features.device.type == "cpu"
    torch.testing.assert_close(gpu.features, cpu.features, rtol=1e-4, atol=1e-4)


def test_inputs_that_fit_move_to_the_gpu_once():
    inputs = Inputs(torch.randn(10, 3))
    resident = inputs.to("cuda")
    assert resident.data.is_cuda and inputs.to("cuda", max_bytes=8).data.device.type == "cpu"
    index = torch.tensor([3, 1])
    torch.testing.assert_close(resident.batch(index, "cuda").cpu(), inputs.data[index])
    torch.testing.assert_close(inputs.batch(index, "cuda").cpu(), inputs.data[index])  # through pinned memory


def _step_without_sync(model, inputs: Inputs, labels: torch.Tensor) -> None:
    index = torch.arange(8)
    labels = labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        with torch.autocast("cuda", dtype=torch.float16):
            logits = model(inputs.batch(index, "cuda"))
            loss = classification_loss(logits.float(), labels[index.to("cuda", non_blocking=True)], "ce")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_head_training_step_makes_no_host_sync():
    features = _features()
    head = build_head("daam", 4, 16, 3).cuda()
    _step_without_sync(head, Inputs(features.features).to("cuda"), features.labels)
    _step_without_sync(head, Inputs(features.features), features.labels)  # batches through pinned memory


def test_text_batches_and_pooling_make_no_host_sync(tiny_bert_dir, tiny_texts):
    """densattn's part of an end-to-end step: cutting a text batch (trimmed with the CPU lengths) and the masked
    pooling. (The tuned model's own forward is the library's: transformers may check a mask on the host.)"""
    from densattn.encoders.base import masked_mean

    encoder = get_encoder(tiny_bert_dir, max_length=16)
    prepared = PeftClassifier(encoder, tiny_texts.classes, tuner=LoraTuner(rank=2)).prepare(list(tiny_texts.items))
    inputs = Inputs(prepared, prepared["attention_mask"].sum(1))
    hidden = torch.randn(8, 1, prepared["input_ids"].shape[1], 32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for resident in (inputs, inputs.to("cuda")):
            batch = resident.batch(torch.arange(8), "cuda")
            width = batch["attention_mask"].shape[1]
            pooled = masked_mean(hidden[:, :, :width], batch["attention_mask"].bool())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert pooled.shape == (8, 1, 32) and batch["input_ids"].is_cuda

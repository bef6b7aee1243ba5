"""Encoders tuned end to end (LoRA, LoRA+, IA3): parameter counts against the analytic formula, what one optimiser
step changes, pooling at initialisation, save/reload, and whole runs on a tiny randomly initialised BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from densattn.adapters import DensityTuner, IA3Tuner, LoraTuner, PeftClassifier, load_adapter
from densattn.encoders import get_encoder
from densattn.train import TrainConfig, make_folds
from densattn.train.end_to_end import EndToEndMethod, run_end_to_end_experiment
from densattn.train.optim import optimizer_groups

WORDS = "the a cat dog sat ran on mat fast slow ball game vote law code bug".split()
TEXTS = [
    "the cat sat on the mat",
    "a dog ran fast",
    "vote law",
    "code bug bug code",
    "the ball game",
    "slow cat",
    "the law",
    "a bug",
] * 3
LABELS = [0, 1, 2, 3] * 6
HIDDEN, LAYERS = 32, 2


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models are far slower on oversubscribed threads
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert_path(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_path):
    return get_encoder(tiny_bert_path, max_length=16)


def _classifier(encoder, path, rank=4, **kw):
    torch.manual_seed(1)
    info = {"name": path, "options": {"max_length": 16}, **encoder.identity()}
    return PeftClassifier(encoder, ["w", "x", "y", "z"], tuner=LoraTuner(rank=rank, alpha=8.0, **kw), encoder_info=info)


def _frozen(model):
    return sum(p.numel() for p in model.parameters() if not p.requires_grad)


def _groups(model, lr=1e-2):
    return optimizer_groups(model, lr=lr, weight_decay=0.0)


@pytest.mark.parametrize("rank", [1, 4])
def test_trainable_count_tiny_bert(tiny_bert, tiny_bert_path, rank):
    model = _classifier(tiny_bert, tiny_bert_path, rank=rank)
    # query and value are Linear(32, 32) in each of the 2 layers: r (in + out) each; classifier 32 x 4 + 4
    lora = LAYERS * 2 * rank * (HIDDEN + HIDDEN)
    counts = model.parameter_counts()
    assert counts["trainable_params_without_classifier"] == lora
    assert counts["trainable_params"] == lora + HIDDEN * 4 + 4
    assert _frozen(model) == sum(p.numel() for p in tiny_bert.raw_model().parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == counts["trainable_params"]


def test_ia3_counts_tiny_bert(tiny_bert, tiny_bert_path):
    model = PeftClassifier(tiny_bert, ["w", "x", "y", "z"], tuner=IA3Tuner())
    # IA3 defaults for BERT: key, value scaled at their outputs (HIDDEN each); output.dense matches the attention
    # output projection (input HIDDEN) and the FFN output (input 64), both feed-forward: scaled at their inputs
    per_layer = HIDDEN + HIDDEN + HIDDEN + 64
    assert model.parameter_counts()["trainable_params_without_classifier"] == LAYERS * per_layer
    with torch.no_grad():  # IA3 vectors start at 1: the tuned encoder is the frozen one
        torch.testing.assert_close(model.eval().pooled(model.prepare(TEXTS[:3])), tiny_bert.encode(TEXTS[:3])[:, -1])


def test_bundled_encoder_counts():
    r = 8
    minilm = PeftClassifier(get_encoder("minilm", max_length=16), ["a", "b"], tuner=LoraTuner(rank=r))
    assert minilm.parameter_counts()["trainable_params_without_classifier"] == 6 * 2 * r * (384 + 384)
    assert minilm.parameter_counts()["trainable_params"] == 6 * 2 * r * 768 + 384 * 2 + 2
    whisper = PeftClassifier(get_encoder("whisper-tiny", window_seconds=1), ["a", "b", "c"], tuner=LoraTuner(rank=r))
    assert whisper.parameter_counts()["trainable_params_without_classifier"] == 4 * 2 * r * (384 + 384)
    effnet = get_encoder("efficientnet-lite0", image_size=32)
    model = PeftClassifier(effnet, ["a", "b"], tuner=LoraTuner(rank=r))
    # (repeats, kernel, stride, expand, in, out): 1x1 expand Conv2d(in, in e) and project Conv2d(in e, out)
    stages = [(1, 1, 32, 16), (2, 6, 16, 24), (2, 6, 24, 40), (3, 6, 40, 80), (3, 6, 80, 112)]
    stages += [(4, 6, 112, 192), (1, 6, 192, 320)]
    expected = 0
    for repeats, e, cin, cout in stages:
        for i in range(repeats):
            c = cin if i == 0 else cout
            expected += (r * c + r * c * e if e != 1 else 0) + r * c * e + r * cout
    assert model.parameter_counts()["trainable_params_without_classifier"] == expected
    assert model.parameter_counts()["trainable_params"] == expected + 320 * 2 + 2
    from peft.tuners.lora.layer import Conv2d as LoraConv2d

    wrapped = [m for n, m in model.backbone.named_modules() if n.endswith(("_project_conv", "_expand_conv"))]
    assert len(wrapped) == 16 + 15 and all(isinstance(m, LoraConv2d) for m in wrapped)


def test_pooled_at_init_equals_frozen_last_layer(tiny_bert, tiny_bert_path):
    model = _classifier(tiny_bert, tiny_bert_path).eval()
    with torch.no_grad():
        pooled = model.pooled(model.prepare(TEXTS[:5]))
    # LoRA's B starts at zero: the adapted encoder is the frozen one
    torch.testing.assert_close(pooled, tiny_bert.encode(TEXTS[:5])[:, -1])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}, {
        n: b.detach().clone() for n, b in model.named_buffers()
    }


def _step(model, optimizer, texts, labels):
    model.train()
    loss = torch.nn.functional.cross_entropy(model(model.prepare(texts)), torch.tensor(labels))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_one_step_changes_classifier_and_lora_only(tiny_bert, tiny_bert_path):
    model = _classifier(tiny_bert, tiny_bert_path)
    optimizer = torch.optim.AdamW(_groups(model))
    before, buffers = _snapshot(model)
    _step(model, optimizer, TEXTS[:8], LABELS[:8])
    after, buffers_after = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    for name in after:
        changed = not torch.equal(before[name], after[name])
        if name.startswith("classifier.") or "lora_B" in name:
            assert changed, f"{name} did not change"
        elif "lora_A" in name:
            # B = 0 at initialisation, so dL/dA = scale * B^T (...) = 0: A moves from the second step on
            assert not changed, f"{name} changed on the first step although its gradient is zero"
        else:
            assert name not in trainable and not changed, f"frozen {name} changed"
    for name in buffers:
        assert torch.equal(buffers[name], buffers_after[name]), name
    _step(model, optimizer, TEXTS[8:16], LABELS[8:16])
    final, _ = _snapshot(model)
    for name in final:
        if "lora_A" in name:
            assert not torch.equal(after[name], final[name]), f"{name} did not change on step 2"
        elif name not in trainable:
            assert torch.equal(before[name], final[name]), f"frozen {name} changed"


def test_efficientnet_step_keeps_batchnorm_and_frozen_weights():
    model = PeftClassifier(get_encoder("efficientnet-lite0", image_size=32), ["a", "b"], tuner=LoraTuner(rank=2))
    optimizer = torch.optim.AdamW(_groups(model))
    before, buffers = _snapshot(model)
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(4)]
    model.train()
    loss = torch.nn.functional.cross_entropy(model(model.prepare(images)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    after, buffers_after = _snapshot(model)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], after[name])
        assert changed == (p.requires_grad and "lora_A" not in name), name
    for name in buffers:  # BatchNorm running statistics stay frozen (eval mode)
        assert torch.equal(buffers[name], buffers_after[name]), name


def test_loraplus_groups_scale_b_learning_rate(tiny_bert, tiny_bert_path):
    model = _classifier(tiny_bert, tiny_bert_path)
    lr, ratio = 1e-3, 16.0
    method = EndToEndMethod(tiny_bert, TEXTS, LABELS, ["w", "x", "y", "z"], method="loraplus", loraplus_ratio=ratio)
    groups = method.optimizer_groups(model, TrainConfig(lr=lr, weight_decay=0.0))
    rates = {name: g["lr"] for g in groups for name in g["param_names"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert rates[name] == (lr * ratio if "lora_B" in name else lr), name
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == model.parameter_counts()["trainable_params"]
    before, _ = _snapshot(model)
    _step(model, torch.optim.AdamW(groups), TEXTS[:8], LABELS[:8])
    after, _ = _snapshot(model)
    # Adam's first step moves each weight with a non-negligible gradient by about its learning rate
    for name in after:
        if "lora_B" in name:
            delta = (after[name] - before[name]).abs()
            assert float(delta.median()) == pytest.approx(lr * ratio, rel=0.05)
        if name == "classifier.weight":
            assert float((after[name] - before[name]).abs().median()) == pytest.approx(lr, rel=0.05)


def test_save_reload_identical_logits(tiny_bert, tiny_bert_path, tmp_path):
    model = _classifier(tiny_bert, tiny_bert_path)
    optimizer = torch.optim.AdamW(_groups(model))
    for i in range(3):
        _step(model, optimizer, TEXTS[i * 8 : i * 8 + 8], LABELS[i * 8 : i * 8 + 8])
    model.set_input_stats(torch.randn(10, HIDDEN))
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    assert isinstance(loaded, PeftClassifier)
    model.eval()
    with torch.no_grad():
        expected = model(model.prepare(TEXTS))
        got = loaded(loaded.prepare(TEXTS))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.predict(TEXTS[:2]) == [model.classes[i] for i in expected[:2].argmax(-1).tolist()]


def test_target_modules_that_match_nothing(tiny_bert):
    with pytest.raises(ValueError, match="target_modules"):
        PeftClassifier(tiny_bert, ["a", "b"], tuner=LoraTuner(target_modules=["no_such_module"]))


@pytest.mark.parametrize("norm_axis", ["features", "tokens"])
def test_daam_peft_classifier_starts_as_the_frozen_encoder(tiny_bert, norm_axis):
    model = PeftClassifier(tiny_bert, ["w", "x", "y", "z"], tuner=DensityTuner(norm_axis=norm_axis))
    assert model.tuner.target_modules == ["attention.output.dense", "output.dense"]
    # per gated module, paper preset, 1 head: one gate weight per feature, plus the offset and spread: per feature
    # over the tokens ("tokens"), or one scalar pair per head over each token's features ("features")
    per_module = HIDDEN + (2 * HIDDEN if norm_axis == "tokens" else 2)
    assert model.parameter_counts()["trainable_params_without_classifier"] == LAYERS * 2 * per_module
    with torch.no_grad():
        torch.testing.assert_close(model.eval().pooled(model.prepare(TEXTS[:4])), tiny_bert.encode(TEXTS[:4])[:, -1])


@pytest.mark.parametrize("method", ["lora", "loraplus", "ia3", "daam_peft"])
def test_run_directory(tiny_bert, tiny_bert_path, tmp_path, method):
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=3)
    out = tmp_path / "run"
    metrics = run_end_to_end_experiment(
        tiny_bert,
        TEXTS,
        torch.tensor(LABELS),
        ["w", "x", "y", "z"],
        out=out,
        method=method,
        tuner_options={"rank": 2, "alpha": 4.0} if method in ("lora", "loraplus") else {},
        train_config=cfg,
        folds=2,
        encoder_info={"name": tiny_bert_path, "options": {"max_length": 16}, **tiny_bert.identity()},
        plots=False,
    )
    saved = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    for key in ("accuracy_mean", "macro_f1_mean", "trainable_params", "trainable_params_without_classifier"):
        assert saved[key] == metrics[key]
    assert saved["method"] == method and saved["kind"] == "end_to_end"
    if method in ("lora", "loraplus"):
        assert config["tuner"] == {"method": "lora", "target_modules": ["query", "value"], "rank": 2, "alpha": 4.0,
                                   "dropout": 0.0}  # fmt: skip
        assert saved["trainable_params"] == LAYERS * 2 * 2 * (2 * HIDDEN) + HIDDEN * 4 + 4
    assert saved["frozen_params"] == sum(p.numel() for p in tiny_bert.raw_model().parameters())
    assert saved["seconds_per_epoch"] > 0
    folds = make_folds(np.array(LABELS), folds=2, config=cfg)
    assert [f["num_test"] for f in saved["folds"]] == [len(f.test) for f in folds]
    assert (out / "folds" / "1" / "last.safetensors").exists() and (out / "metrics.csv").exists()
    loaded = load_adapter(out)
    fold0 = load_adapter(out / "folds" / "0" / "adapter")
    with torch.no_grad():
        logits = loaded(loaded.prepare(TEXTS))
        torch.testing.assert_close(logits, fold0(fold0.prepare(TEXTS)), rtol=0, atol=0)
    # the reloaded fold-0 model scores its own test split exactly as the run recorded
    test = torch.as_tensor(folds[0].test)
    accuracy = float((logits[test].argmax(-1) == torch.tensor(LABELS)[test]).double().mean())
    assert accuracy == saved["folds"][0]["accuracy"]
    with pytest.raises(ValueError, match="not empty"):
        run_end_to_end_experiment(tiny_bert, TEXTS, torch.tensor(LABELS), ["w", "x", "y", "z"], out=out, folds=2)


def test_cli_train_lora(tiny_bert_path, tmp_path):
    from densattn.cli import main

    table = tmp_path / "texts.csv"
    table.write_text("text,label\n" + "".join(f"{t},{'wxyz'[y]}\n" for t, y in zip(TEXTS, LABELS)))
    out = tmp_path / "run"
    argv = ["train", "--method", "loraplus", "--encoder", tiny_bert_path, "--data", f"csv:{table}"]
    argv += ["--folds", "2", "--epochs", "1", "--batch-size", "8", "--rank", "2", "--alpha", "4"]
    argv += ["--target-modules", "query,key,value", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["method"] == "loraplus" and config["loraplus_ratio"] == 16.0
    assert config["feature_cache"]["dataset_fingerprint"]
    assert config["tuner"]["target_modules"] == ["query", "key", "value"]
    assert metrics["trainable_params_without_classifier"] == LAYERS * 3 * 2 * (2 * HIDDEN)
    assert main(argv + ["--resume"]) == 0  # finished folds are kept
    # densattn evaluate scores a LoRA run end to end on raw examples, as the reloaded adapter does
    scores = tmp_path / "scores.json"
    argv_eval = ["evaluate", str(out), "--encoder", tiny_bert_path, "--data", f"csv:{table}", "--out", str(scores)]
    assert main(argv_eval + ["--cache-dir", str(tmp_path / "cache")]) == 0
    model = load_adapter(out)
    with torch.no_grad():
        predicted = model(model.prepare(TEXTS)).argmax(-1)
    assert json.loads(scores.read_text())["accuracy"] == float((predicted == torch.tensor(LABELS)).double().mean())


def test_cli_train_daam_peft_and_evaluate(tiny_bert_path, tmp_path):
    from densattn.cli import main

    table = tmp_path / "texts.csv"
    table.write_text("text,label\n" + "".join(f"{t},{'wxyz'[y]}\n" for t, y in zip(TEXTS, LABELS)))
    out = tmp_path / "run"
    argv = ["train", "--method", "daam-peft", "--norm-axis", "tokens", "--encoder", tiny_bert_path]
    argv += ["--data", f"csv:{table}", "--folds", "2", "--epochs", "2", "--batch-size", "8", "--lr", "1e-2"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "daam_peft" and config["tuner"]["norm_axis"] == "tokens"
    model = load_adapter(out)
    assert model.get_config().type == "daam_peft"
    gates = [p for n, p in model.named_parameters() if "daam_scale" in n]
    assert gates and any(bool((g != 0).any()) for g in gates)  # training moved the gates off the identity
    scores = tmp_path / "scores.json"
    assert main(["evaluate", str(out), "--data", f"csv:{table}", "--out", str(scores)]) == 0
    with torch.no_grad():
        predicted = model(model.prepare(TEXTS)).argmax(-1)
    assert json.loads(scores.read_text())["accuracy"] == float((predicted == torch.tensor(LABELS)).double().mean())
    bad = argv[:-1] + [str(tmp_path / "other"), "--rank", "4"]
    assert main(bad) == 2

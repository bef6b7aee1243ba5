"""The README's quick example runs as written (in a scratch folder, with a scratch feature cache)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"## Quick example\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its quick example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DENSATTN_CACHE", str(tmp_path / "cache"))
    exec(compile(block.group(1), "README quick example", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\['(politics|sports|work|computers)', '(politics|sports|work|computers)'\]", printed)
    assert (tmp_path / "runs" / "daam" / "adapter_model.safetensors").exists()


def test_daam_inside_the_model_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"## DAAM inside the model\n.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its densattn.peft example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README densattn.peft example", "exec"), {})
    printed = capsys.readouterr().out
    assert "trainable params: 4,632 || all params: 22,717,848" in printed  # the count the comment in the block states
    assert (tmp_path / "runs" / "daam_gates" / "adapter_config.json").exists()


def test_attention_family_example_runs():
    block = re.search(r"### One attention family.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its attention-family example"
    import torch

    scope: dict = {}
    exec(compile(block.group(1), "README attention family example", "exec"), scope)
    x, mask = torch.randn(2, 9, 256), torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    y = scope["encoder"](x, mask=mask)
    assert y.shape == (2, 9, 256) and torch.isfinite(y).all()
    assert len(scope["encoder"].layers) == 6 and scope["layer"].attention_name == "daam"

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

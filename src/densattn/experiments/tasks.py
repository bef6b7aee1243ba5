"""Benchmark tasks: an (encoder, data, options) triple (:class:`Task`), read from a TOML task list
(:func:`load_tasks`) and selected by name or modality (:func:`select_tasks`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODALITY_GROUPS", "Task", "load_tasks", "select_tasks"]

MODALITY_GROUPS = {"text": "text", "image": "vision", "audio": "speech"}


@dataclass(frozen=True)
class Task:
    """One benchmark task: data spec + encoder + options (the arguments of :func:`densattn.pipeline.load_task`).

    Attributes:
        name: short id (folder name of its runs).
        modality: ``"text"``, ``"vision"`` or ``"speech"`` (checked against the data when it is loaded).
        note: one line for the report.
    """

    name: str
    modality: str
    encoder: str
    data: str
    max_samples: int | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"task name {self.name!r} must be a plain folder name")
        if self.modality not in MODALITY_GROUPS.values():
            raise ValueError(f"task {self.name!r}: modality must be one of text, vision, speech; got {self.modality!r}")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 10):
            raise ValueError(f"task {self.name!r}: max_samples must be an int >= 10, got {self.max_samples!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def load_tasks(path: str | Path) -> dict[str, Task]:
    """The tasks of a TOML task list: one ``[tasks.NAME]`` table each with ``modality``, ``encoder``, ``data`` and
    optionally ``max_samples``, ``note``, ``[tasks.NAME.encoder_options]``, ``[tasks.NAME.data_options]``.

    Raises:
        ValueError: a missing file, invalid TOML, an unknown key or a bad value (the message names the task).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "tasks.toml"
        >>> _ = f.write_text('[tasks.topics]\\nmodality = "text"\\nencoder = "minilm"\\ndata = "fortunes"\\n')
        >>> load_tasks(f)["topics"].data
        'fortunes'
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task list {path} does not exist; pass --task-file (the project ships benchmarks/tasks.toml)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"task list {path} is not valid TOML: {err}") from None
    tables = doc.get("tasks")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"task list {path} has no [tasks.NAME] tables")
    known = set(Task.__dataclass_fields__) - {"name"}
    out = {}
    for name, table in tables.items():
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{path}: task {name!r} has unknown key(s) {unknown}; known: {sorted(known)}")
        out[name] = Task(name=name, **table)
    return out


def select_tasks(all_tasks: dict[str, Task], names: Sequence[str] | None) -> list[Task]:
    """Tasks by name, or all tasks of a modality (``text``, ``vision``, ``speech``); ``None``: every task."""
    if not names:
        return list(all_tasks.values())
    chosen: dict[str, Task] = {}
    for name in names:
        if name in all_tasks:
            chosen[name] = all_tasks[name]
        elif name in MODALITY_GROUPS.values():
            chosen.update({t.name: t for t in all_tasks.values() if t.modality == name})
        else:
            raise ValueError(
                f"--tasks: unknown task {name!r}; choose from {sorted(all_tasks)} or a modality (text, vision, speech)"
            )
    return list(chosen.values())

"""DAAM inside a model, as a parameter-efficient fine-tuning method with HF ``peft``'s vocabulary.

Density-adaptive attention (arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_) as a gate on the output ``h``
of every target module::

    y = h * (1 + g * (a(h) - 1)),   a = densattn.functional.density_attention weights,   g init 0

so the adapted model equals the base model at initialisation and pure DAAM (``y = h * a``) is ``g = 1``.
Everything but the gates (and ``modules_to_save``) is frozen. Design notes: ``docs/peft.md``.

API (peft's names where peft has one):

* :class:`DensityConfig` -- the config, saved as ``adapter_config.json``.
* :func:`get_density_model` -> :class:`DensityModel`: ``forward`` takes the base model's arguments (plus
  ``density_mask=``), ``print_trainable_parameters()``, ``save_pretrained(dir)``,
  ``DensityModel.from_pretrained(base, dir, is_trainable=False)``, ``disable_adapter()``, ``unload()``;
  ``merge_and_unload()`` raises.
* :func:`get_density_model_state_dict` / :func:`set_density_model_state_dict` -- adapter-only weights.
* :func:`default_target_modules` -- default targets of the bundled encoders and HF models.

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from densattn.peft import DensityConfig, get_density_model
    >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                             intermediate_size=64, vocab_size=50)).eval()
    >>> model = get_density_model(bert, DensityConfig(norm_axis="tokens"))
    >>> model.print_trainable_parameters()
    trainable params: 384 || all params: 36,640 || trainable%: 1.0480
    >>> ids, mask = torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    >>> model(input_ids=ids, attention_mask=mask).last_hidden_state.shape
    torch.Size([2, 7, 32])
"""

from densattn.peft.config import CONFIG_NAME, NORM_AXES, WEIGHTS_NAME, DensityConfig
from densattn.peft.layer import DensityLayer, check_gate_fits
from densattn.peft.model import MERGE_ERROR, DensityModel, get_density_model
from densattn.peft.state import get_density_model_state_dict, set_density_model_state_dict
from densattn.peft.targets import default_target_modules, gateable_modules, output_spec

__all__ = [
    "CONFIG_NAME",
    "MERGE_ERROR",
    "NORM_AXES",
    "WEIGHTS_NAME",
    "DensityConfig",
    "DensityLayer",
    "DensityModel",
    "check_gate_fits",
    "default_target_modules",
    "gateable_modules",
    "get_density_model",
    "get_density_model_state_dict",
    "output_spec",
    "set_density_model_state_dict",
]

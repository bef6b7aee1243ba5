"""Adapter-only state dicts of DAAM-PEFT, the counterparts of peft's ``get_peft_model_state_dict`` /
``set_peft_model_state_dict`` (which cannot serve this method: they dispatch on peft's ``PeftType`` enum).

Keys are relative to the base model and carry no adapter name, so a saved adapter loads onto a fresh base model
under any adapter name::

    encoder.layer.0.output.dense.daam_gate.mean_offset   (H, N) or (H, N, F)   Gaussian offsets
    encoder.layer.0.output.dense.daam_gate.spread        same shape             Gaussian spreads
    encoder.layer.0.output.dense.daam_gate.mixture_logits (H, N)                preset "mixture" only
    encoder.layer.0.output.dense.daam_scale              (F,)                   mixing weights g
    classifier.weight, classifier.bias, ...                                     modules_to_save, in full
"""

from __future__ import annotations

from peft.utils import ModulesToSaveWrapper
from torch import Tensor, nn

from densattn.peft.layer import DensityLayer

__all__ = ["get_density_model_state_dict", "set_density_model_state_dict"]


def _base(model: nn.Module) -> nn.Module:
    from densattn.peft.model import DensityModel

    return model.model if isinstance(model, DensityModel) else model


def _adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, Tensor]:
    """Saved key -> the live parameter / buffer it stands for."""
    out: dict[str, Tensor] = {}
    for name, module in _base(model).named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, DensityLayer) and adapter_name in module.daam_gate:
            for key, tensor in module.daam_gate[adapter_name].state_dict(keep_vars=True).items():
                out[f"{prefix}daam_gate.{key}"] = tensor
            out[f"{prefix}daam_scale"] = module.daam_scale[adapter_name]
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            for key, tensor in module.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                out[f"{prefix}{key}"] = tensor
    return out


def get_density_model_state_dict(model: nn.Module, *, adapter_name: str = "default") -> dict[str, Tensor]:
    """The adapter's weights only (gates and ``modules_to_save``), detached copies, keys as in the module docstring.

    Args:
        model: a :class:`~densattn.peft.DensityModel`, or a model with DAAM gates injected in it.
        adapter_name: which adapter.

    Raises:
        ValueError: when the model has no adapter of that name.

    Example:
        >>> from densattn.peft import DensityConfig, get_density_model
        >>> net = get_density_model(nn.Sequential(nn.Linear(4, 6)), DensityConfig(target_modules=["0"]))
        >>> sorted(get_density_model_state_dict(net))
        ['0.daam_gate.mean_offset', '0.daam_gate.spread', '0.daam_scale']
    """
    tensors = _adapter_tensors(model, adapter_name)
    if not tensors:
        raise ValueError(
            f"the model has no DAAM-PEFT adapter named {adapter_name!r}; was it built by get_density_model?"
        )
    return {key: t.detach().clone() for key, t in tensors.items()}


def set_density_model_state_dict(model: nn.Module, state: dict[str, Tensor], *, adapter_name: str = "default") -> None:
    """Load ``state`` (from :func:`get_density_model_state_dict` or ``adapter_model.safetensors``) into the model's
    adapter ``adapter_name``, strictly: every adapter tensor must be present with its shape, and nothing else.

    Raises:
        ValueError: naming the missing, unexpected or mis-shaped keys (a different base model, targets or options).
    """
    tensors = _adapter_tensors(model, adapter_name)
    if not tensors:
        raise ValueError(
            f"the model has no DAAM-PEFT adapter named {adapter_name!r}; was it built by get_density_model?"
        )
    missing, unexpected = sorted(set(tensors) - set(state)), sorted(set(state) - set(tensors))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not fit this model: missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}; were they saved from the same "
            "base model with the same target_modules and options?"
        )
    wrong = [(k, tuple(state[k].shape), tuple(t.shape)) for k, t in tensors.items() if state[k].shape != t.shape]
    if wrong:
        key, got, want = wrong[0]
        raise ValueError(
            f"adapter weight {key!r} has shape {got} but the model expects {want} ({len(wrong)} mismatched); were "
            "they saved with the same num_heads, num_gaussians, preset and norm_axis?"
        )
    import torch

    with torch.no_grad():
        for key, tensor in tensors.items():
            tensor.copy_(state[key].to(device=tensor.device, dtype=tensor.dtype))

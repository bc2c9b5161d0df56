"""Quantization-aware training for PyTorch models (--qat, and the recovery ladder's training rung).

The model is fine-tuned on labelled data with int8 rounding in its forward
pass, the float source teaching under --distill: every conv and linear weight
is rounded per output channel (symmetric, scale max|w|/127: what both PyTorch
routes' quantizers give it), every conv, linear and activation module's output
per tensor (asymmetric, over a running range), and gradients pass straight
through the rounding. The weights are then left on the int8 grid they were
trained on, and the route quantizes the trained model as any other (its own
calibration sets the activation ranges). A pruned model keeps its zeros.

Why not PT2E's prepare_qat_pt2e: with torchao 0.18 (what litert-torch 0.10
brings) on torch 2.13 it fails inside its own pattern matching ("Expected `mod`
to be an instance of `torch.nn.Module`, got function"). Batch norm keeps its
statistics during training; a conv followed by one is rounded before it, where
the artifact (norm folded) rounds after it: a little more noise in training
than on the device, never less.
"""

from __future__ import annotations

import copy

from edgesdk.errors import ConversionError

from .torch_model import import_torch, set_mode
from .torch_prune import _cross_entropy_epoch, prunable_parameters

torch = import_torch()  # a trainer is looked up for PyTorch sources only: torch is loaded already

RANGE_MOMENTUM = 0.01  # how fast an activation's running range follows the batches' min/max


def unavailable(source) -> str | None:
    """Why this source cannot be trained quantization-aware here, or None when it can."""
    if source.flavor == "torchscript":
        return ("quantization-aware training takes nn.Modules or ExportedPrograms, not TorchScript; give the "
                "module (or its state_dict with --model-factory)")
    if source.multi_input:
        return "quantization-aware training takes single-input models"
    if not prunable_parameters(source.model):
        return "the model has no conv or linear weights to train for int8"
    return None


def train(source, data, recipe, teacher=None):
    """Fine-tune a copy of `source.model` quantization-aware on `data` (labelled: conversion checks, before
    anything runs); returns (the trained model, a record). teacher: the float source's outputs on data.x, for a
    model pruned since (else, with recipe.distill, the model itself teaches)."""
    from torch.nn.utils import parametrize
    model = copy.deepcopy(source.model)
    params = prunable_parameters(model)
    masks = [p.detach() != 0 for _, p in params] if recipe.sparsity else None
    owners = [_owner(model, name) for name, _ in params]
    hooks = [m.register_forward_hook(_ActivationRounding()) for m in model.modules() if _rounds_output(m)]
    try:
        for (module, attr), (_, p) in zip(owners, params):
            parametrize.register_parametrization(module, attr, _WeightRounding(_channel_axis(module)))
        trained = [getattr(module.parametrizations, attr).original for module, attr in owners]

        def keep_zeros(_step):  # a pruned weight Adam's momentum moved goes back to zero
            if masks is not None:
                for p, m in zip(trained, masks):
                    p.mul_(m)
        epoch, taught = _cross_entropy_epoch(source, data, recipe.batch_size, recipe.learning_rate, keep_zeros,
                                             recipe.distill, teacher, model=model)
        torch.manual_seed(0)
        set_mode(model, training=True)
        for m in model.modules():  # small fine-tuning batches would unsettle the statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        for e in range(recipe.epochs):
            epoch(model, e)
    except RuntimeError as exc:  # a weight the rounding does not fit, an op autograd cannot pass
        from edgesdk.util import first_line
        raise ConversionError(f"quantization-aware training failed on this model: {first_line(exc)[:300]}") from None
    finally:
        for h in hooks:
            h.remove()
        set_mode(model, training=False)
    for module, attr in owners:  # the weights stay on the grid they were trained on
        if parametrize.is_parametrized(module, attr):
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model, {"method": "fake-quantized int8 training (weights per channel, activations per tensor), "
                             "straight-through gradients" + (", pruning preserved" if recipe.sparsity else ""),
                   "epochs": recipe.epochs, "samples": len(data), "learning_rate": recipe.learning_rate,
                   "teacher": taught}


def _owner(model, name: str) -> tuple:
    """(the module holding the parameter `name`, its attribute name)."""
    prefix, _, attr = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), attr


def _channel_axis(module) -> int:
    """The output-channel axis of the module's weight: 1 for transposed convolutions, else 0."""
    return 1 if isinstance(module, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
                                    torch.nn.ConvTranspose3d)) else 0


def _rounds_output(module) -> bool:
    """Whether the artifact holds this module's output as an int8 tensor of its own."""
    nn = torch.nn
    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
    activations = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                   nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softmax)
    return isinstance(module, layers + activations)


class _WeightRounding(torch.nn.Module):
    """A weight rounded to int8 per output channel, symmetric; the gradient passes straight through."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, w):
        dims = [d for d in range(w.ndim) if d != self.axis]
        scale = (w.detach().abs().amax(dim=dims) / 127).clamp_min(1e-12).float()
        zero = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, self.axis, -127, 127)


class _ActivationRounding:
    """A forward hook rounding a module's output to int8 per tensor, over a running range of what it saw."""

    def __init__(self):
        self.lo = self.hi = None

    def __call__(self, module, args, out):
        if not (module.training and isinstance(out, torch.Tensor) and out.is_floating_point()):
            return out
        lo, hi = float(out.detach().min()), float(out.detach().max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo += RANGE_MOMENTUM * (lo - self.lo)
            self.hi += RANGE_MOMENTUM * (hi - self.hi)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # zero is exact in int8
        scale = max(hi - lo, 1e-8) / 255
        zero = int(min(127, max(-128, round(-128 - lo / scale))))
        return torch.fake_quantize_per_tensor_affine(out, scale, zero, -128, 127)

"""Global magnitude pruning for PyTorch models, made permanent before export.

One threshold across all conv/linear weights (global, as torch.nn.utils.prune's
global_unstructured), kept with masks of our own so it works on any module,
including the GraphModule of an ExportedProgram. During fine-tuning the
sparsity ramps up polynomially epoch by epoch; gradients of pruned weights are
masked and the masks re-applied after every epoch, so pruned weights stay zero.
"""

from __future__ import annotations

import numpy as np

from edgesdk.errors import ConversionError, DataError

from .torch_model import set_mode


def prunable_parameters(model) -> list:
    import torch
    out, seen = [], set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear,
                            torch.nn.ConvTranspose2d)):
            p = mod.weight
            if id(p) not in seen:
                seen.add(id(p))
                out.append((f"{mod_name}.weight" if mod_name else "weight", p))
    if not out:  # e.g. an ExportedProgram's GraphModule: plain parameters, no layer classes
        for name, p in model.named_parameters():
            if p.ndim >= 2 and id(p) not in seen:
                seen.add(id(p))
                out.append((name, p))
    return out


def measure_sparsity(model) -> dict:
    layers, zeros, total = {}, 0, 0
    for name, p in prunable_parameters(model):
        z = int((p.detach() == 0).sum())
        layers[name] = round(z / p.numel(), 4)
        zeros, total = zeros + z, total + p.numel()
    return {"overall": round(zeros / total, 4) if total else 0.0, "layers": layers, "weights": int(total)}


def global_masks(params, sparsity: float) -> list:
    import torch
    flat = torch.cat([p.detach().abs().flatten() for _, p in params])
    k = int(sparsity * flat.numel())
    if k == 0:
        return [torch.ones_like(p, dtype=torch.bool) for _, p in params]
    threshold = torch.kthvalue(flat, k).values
    masks = [p.detach().abs() > threshold for _, p in params]
    # ties at the threshold: trim exactly k weights overall
    excess = sum(int((~m).sum()) for m in masks) - k
    if excess > 0:
        for (_, p), m in zip(params, masks):
            tied = ((p.detach().abs() == threshold) & ~m).nonzero()
            for idx in tied[:excess]:
                m[tuple(idx)] = True
            excess -= min(excess, len(tied))
            if excess <= 0:
                break
    return masks


def _apply(params, masks):
    import torch
    with torch.no_grad():
        for (_, p), m in zip(params, masks):
            p.mul_(m)


def prune(source, sparsity: float, fine_tune=None, epochs: int = 2, batch_size: int = 32,
          learning_rate: float = 1e-3, log=print, distill: bool = False) -> dict:
    """Prune `source.model` in place; `fine_tune` is labelled data or a callable(model, epoch)."""
    if source.flavor == "torchscript":
        raise ConversionError("TorchScript models cannot be pruned here; prune the nn.Module before scripting "
                              "it, or give an ExportedProgram (.pt2) or a state_dict with --model-factory.")
    params = prunable_parameters(source.model)
    if not params:
        raise ConversionError("The model has no conv or linear weights to prune; drop --prune.")
    report = {"target": sparsity, "method": None, "epochs": 0, "fine_tuned": fine_tune is not None}
    if fine_tune is None:
        log(f"warning: one-shot global magnitude pruning to {sparsity:.0%} without fine-tuning: accuracy "
            f"usually drops, more so above 50%. Pass --fine-tune DATA (or a training callback) to recover it.")
        _apply(params, global_masks(params, sparsity))
        report["method"] = "one-shot global magnitude"
    else:
        if callable(fine_tune):
            _prune_per_epoch(source, params, sparsity, fine_tune, epochs)
        else:
            report["teacher"] = _prune_per_step(source, params, sparsity, fine_tune, epochs, batch_size,
                                                learning_rate, distill)
        _apply(params, global_masks(params, sparsity))
        report["method"] = "gradual global magnitude"
        report["epochs"] = epochs
    achieved = measure_sparsity(source.model)
    report["achieved"], report["layers"] = achieved["overall"], achieved["layers"]
    if achieved["overall"] + 0.01 < sparsity:
        raise ConversionError(f"Pruning reached only {achieved['overall']:.1%} of the {sparsity:.0%} asked for; "
                              f"this is a bug in edgesdk's pruning, please report it.")
    return report


RAMP_SHARE = 0.7  # sparsity reaches its target after this share of the steps; the rest recovers at it


def schedule(step: int, ramp_steps: int, sparsity: float) -> float:
    """Polynomial (cubic) ramp from 0 to `sparsity` over `ramp_steps`, as tfmot's PolynomialDecay."""
    frac = min(1.0, step / max(1, ramp_steps))
    return sparsity * (1.0 - (1.0 - frac) ** 3)


def _prune_per_step(source, params, sparsity, data, epochs, batch_size, learning_rate, distill=False):
    """Masks raised every few optimizer steps and re-applied after each, so Adam's momentum cannot move a
    pruned weight (with per-epoch masks and epochs=2 the whole sparsity landed at epoch 0)."""
    steps_per_epoch = -(-len(data.x) // batch_size)
    ramp = max(1, int(RAMP_SHARE * epochs * steps_per_epoch))
    every = max(1, ramp // 10)
    state = {"masks": global_masks(params, schedule(0, ramp, sparsity))}

    def after_step(step: int) -> None:
        if step % every == 0 and step <= ramp + every:
            state["masks"] = global_masks(params, schedule(step, ramp, sparsity))
        _apply(params, state["masks"])
    trainer, teacher = _cross_entropy_epoch(source, data, batch_size, learning_rate, after_step, distill)
    try:
        set_mode(source.model, training=True)
        for epoch in range(epochs):
            trainer(source.model, epoch)
    finally:
        set_mode(source.model, training=False)
    return teacher


def _prune_per_epoch(source, params, sparsity, train_one_epoch, epochs) -> None:
    """A caller's training callback runs whole epochs: masks rise per epoch, gradients masked by hooks."""
    hooks = []
    try:
        for epoch in range(epochs):
            masks = global_masks(params, schedule(epoch + 1, epochs, sparsity))
            _apply(params, masks)
            for h in hooks:
                h.remove()
            hooks = [p.register_hook(lambda g, m=m: g * m) for (_, p), m in zip(params, masks)]
            set_mode(source.model, training=True)
            train_one_epoch(source.model, epoch)
            set_mode(source.model, training=False)
            _apply(params, masks)
    finally:
        for h in hooks:
            h.remove()
        set_mode(source.model, training=False)


# Knowledge distillation, as the Keras pruner does it: the float source (before pruning) as teacher
DISTILL_ALPHA, DISTILL_T = 0.5, 4.0


def _cross_entropy_epoch(source, data, batch_size, learning_rate, after_step=None, distill=False, teacher=None,
                         model=None):
    """(one epoch of fine-tuning, the teacher's record or None): cross-entropy on the labels, plus with
    distill the KL divergence to the float source's outputs at temperature DISTILL_T (`teacher`: those
    outputs taken earlier, for a model pruned since). `model`: what is trained, when not source.model."""
    import torch
    from edgesdk.judge.tasks.classify import is_probabilities
    if data.y is None:
        raise DataError(f"Fine-tuning data ({data.source}) has no labels; give an .npz with 'y'.")
    outs = source.predict(data.x[:64])
    if len(outs) != 1:
        raise DataError("Fine-tuning from the command line supports single-output classifiers; pass a "
                        "training callback in Python for other models.")
    probabilities = is_probabilities(outs[0])
    optimizer = torch.optim.Adam((source.model if model is None else model).parameters(), lr=learning_rate)
    x, y = torch.from_numpy(np.ascontiguousarray(data.x)), torch.from_numpy(data.y)
    taught = None
    if distill and outs[0].ndim == 2 and outs[0].shape[-1] >= 2:
        taught = torch.from_numpy(np.asarray(source.predict(data.x)[0] if teacher is None else teacher,
                                             dtype=np.float32))
        taught = torch.log(taught.clamp_min(1e-7)) if probabilities else taught

    def loss_of(out, idx):
        logits = torch.log(out.clamp_min(1e-7)) if probabilities else out
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        if taught is None:
            return loss
        soft = torch.nn.functional.kl_div(torch.log_softmax(logits / DISTILL_T, -1),
                                          torch.log_softmax(taught[idx] / DISTILL_T, -1), log_target=True,
                                          reduction="batchmean")
        return DISTILL_ALPHA * soft * DISTILL_T ** 2 + (1 - DISTILL_ALPHA) * loss
    gen = torch.Generator().manual_seed(0)
    steps = [0]

    def epoch(model, _epoch):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            optimizer.zero_grad()
            try:
                out = model(x[idx])
            except Exception as exc:  # e.g. an ExportedProgram fixed to its example's batch size
                raise ConversionError(_cannot_train(source, len(idx), exc)) from None
            loss = loss_of(out, idx)
            loss.backward()
            optimizer.step()
            steps[0] += 1
            if after_step is not None:
                with torch.no_grad():
                    after_step(steps[0])
    return epoch, ({"alpha": DISTILL_ALPHA, "temperature": DISTILL_T} if taught is not None else None)


def _cannot_train(source, batch: int, exc) -> str:
    from edgesdk.util import first_line
    why = f"Fine-tuning could not run the model on a batch of {batch} samples: {first_line(exc)[:200]}."
    if source.flavor == "exported-program":
        why += (" An ExportedProgram keeps the batch size it was exported with: export it with a dynamic batch "
                "dimension (dynamic_shapes with torch.export.Dim), or give the nn.Module.")
    return why


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restore(model, state) -> None:
    model.load_state_dict(state)

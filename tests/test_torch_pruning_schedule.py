"""The PyTorch pruning schedule: sparsity ramps up over the steps, and a pruned weight stays zero under Adam."""

import numpy as np
import pytest

from edgesdk.converters import torch_prune


def test_schedule_ramps_from_zero_to_the_target_and_stays():
    values = [torch_prune.schedule(s, 100, 0.75) for s in range(0, 131, 10)]
    assert values[0] == 0.0 and values[10] == values[-1] == 0.75
    assert all(a < b for a, b in zip(values[:11], values[1:11]))
    assert 0.5 < torch_prune.schedule(50, 100, 0.75) < 0.75  # cubic: most of it early, then gently


def test_per_step_pruning_keeps_masked_weights_zero_under_adam():
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x = np.random.default_rng(0).normal(size=(256, 8, 8)).astype(np.float32)
    y = (x.reshape(256, -1)[:, :10].argmax(1)).astype(np.int64)
    data = SimpleNamespace(x=x, y=y, source="test")
    source = SimpleNamespace(model=model, flavor="module",
                             predict=lambda a: [model(torch.from_numpy(a)).detach().numpy()])
    params = torch_prune.prunable_parameters(model)
    seen = []
    real_apply = torch_prune._apply

    def watching_apply(ps, masks):  # after each re-masking, every masked weight is exactly zero
        real_apply(ps, masks)
        seen.append(all(bool((p[~m] == 0).all()) for (_, p), m in zip(ps, masks)))
    torch_prune._apply = watching_apply
    try:
        torch_prune._prune_per_step(source, params, 0.75, data, epochs=2, batch_size=32, learning_rate=1e-2)
    finally:
        torch_prune._apply = real_apply
    assert len(seen) == 16 and all(seen)  # 2 epochs x 8 steps, masks re-applied after every step
    zeros = sum(int((p == 0).sum()) for _, p in params) / sum(p.numel() for _, p in params)
    assert 0.74 <= zeros <= 0.76

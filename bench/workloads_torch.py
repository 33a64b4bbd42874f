#!/usr/bin/env python3
"""The PyTorch side of the workload benchmarks and of their parity check.

    workloads_torch.py export NAME OUT.safetensors
        builds NAME as ../shared/peers/torch_bench.py does (on smaller
        inputs), runs one training
        step in float64 and one in float32 from the same weights and writes
        the state_dict, inputs, target, the float64 loss and parameter
        gradients ("loss", "grad.<name>") and the float32 ones ("loss32",
        "grad32.<name>") to one safetensors file. Float32 gradients of
        these networks are only as good as their conditioning allows (for
        the U-Nets torch's own float32 gradients differ from float64 by
        1-5%), so the check measures lumen against float64 with torch's
        float32 error as the yardstick.
    workloads_torch.py time NAME... [--iters N --warmup N --threads N]
        prints "<name> <median step seconds> <iters>" per workload, from
        the peer script's own timing (../shared/peers/torch_bench.py, or
        $LUMEN_PEERS/torch_bench.py).
"""
import json, os, struct, sys
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("LUMEN_PEERS", os.path.join(HERE, "..", "..", "shared", "peers"))

nn, F = torch.nn, torch.nn.functional


# The networks of ../shared/BENCH.md, written here (as bench/workloads.lua
# writes them in lumen) so that the parity check needs only torch; the
# timing side runs the peer script itself, torch_bench.py.
class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1), \
            nn.Conv2d(64, 128, 3, padding=1)
        self.f1, self.f2 = nn.Linear(8192, 256), nn.Linear(256, 2)

    def forward(self, x):
        for c in (self.c1, self.c2, self.c3):
            x = F.max_pool2d(F.relu(c(x)), 2)
        return self.f2(F.relu(self.f1(x.flatten(1))))


def block(dim, cin, cout):
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(conv(cin, cout, 3, padding=1, bias=False), bn(cout), nn.ReLU(),
                         conv(cout, cout, 3, padding=1, bias=False), bn(cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, dim, chans):
        super().__init__()
        self.dim = dim
        convt, conv = (nn.ConvTranspose2d, nn.Conv2d) if dim == 2 else (nn.ConvTranspose3d, nn.Conv3d)
        self.enc = nn.ModuleList([block(dim, a, b) for a, b in zip((1,) + tuple(chans[:-1]), chans)])
        rev = list(reversed(chans))
        self.ups = nn.ModuleList([convt(a, b, 2, stride=2) for a, b in zip(rev[:-1], rev[1:])])
        self.dec = nn.ModuleList([block(dim, 2 * b, b) for b in rev[1:]])
        self.head = conv(chans[0], 2, 1)

    def forward(self, x):
        pool = F.max_pool2d if self.dim == 2 else F.max_pool3d
        skips = []
        for i, b in enumerate(self.enc):
            x = b(pool(x, 2) if i else x)
            skips.append(x)
        for i, (up, b) in enumerate(zip(self.ups, self.dec)):
            x = b(torch.cat([skips[-2 - i], up(x)], 1))
        return self.head(x)


class Pathway(nn.Module):
    def __init__(self):
        super().__init__()
        layers, prev = [], 1
        for c in (30, 30, 40, 40, 40, 40, 50, 50):
            layers += [nn.Conv3d(prev, c, 3), nn.ReLU()]
            prev = c
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class DeepMedic(nn.Module):
    def __init__(self):
        super().__init__()
        self.normal, self.sub = Pathway(), Pathway()
        self.fc1, self.fc2, self.out = nn.Conv3d(100, 150, 1), nn.Conv3d(150, 150, 1), nn.Conv3d(150, 2, 1)

    def forward(self, xn, xs):
        x = torch.cat([self.normal(xn), F.interpolate(self.sub(xs), scale_factor=3, mode="nearest")], 1)
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(256, 128, batch_first=True), nn.Linear(128, 12)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


def ce_dice(logits, target, eps=1e-5):
    p, t = logits.softmax(1)[:, 1], (target == 1).to(logits.dtype)
    return F.cross_entropy(logits, target) + 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def build(name):
    """(model, inputs, target, loss) with the spec-sized inputs."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "lenet":
        return LeNet(), (torch.randn(4, 1, 64, 64, generator=g),), torch.randint(0, 2, (4,), generator=g), F.cross_entropy
    if name in ("unet2d", "unet3d"):
        dim = 2 if name == "unet2d" else 3
        x = torch.randn(*((2, 1, 32, 32) if dim == 2 else (1, 1, 16, 16, 16)), generator=g)
        return UNet(dim, (32, 64, 128, 256) if dim == 2 else (16, 32, 64)), (x,), (x[:, 0] > 0.5).long(), ce_dice
    if name == "deepmedic":
        xn, xs = torch.randn(2, 1, 25, 25, 25, generator=g), torch.randn(2, 1, 19, 19, 19, generator=g)
        return DeepMedic(), (xn, xs), (xn[:, 0, 8:17, 8:17, 8:17] > 0.5).long(), F.cross_entropy
    if name == "lstm":
        return LSTMClassifier(), (torch.randn(4, 30, 256, generator=g),), torch.randint(0, 12, (4,), generator=g), \
            F.cross_entropy
    raise ValueError(name)


DT = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name].detach().cpu().numpy()
        b = np.ascontiguousarray(a).tobytes()  # (which makes 0-d arrays 1-d)
        header[name] = {"dtype": DT[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def export(name, out):
    torch.set_num_threads(2)
    model, inputs, target, loss_fn = build(name)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    for i, x in enumerate(inputs):
        tensors["input.%d" % i] = x
    tensors["target"] = target
    model.train()
    for suffix, dtype in (("32", torch.float32), ("", torch.float64)):
        model.load_state_dict({k: v for k, v in tensors.items() if k in model.state_dict()})
        model.to(dtype)
        model.zero_grad()
        loss = loss_fn(model(*[x.to(dtype) for x in inputs]), target)
        loss.backward()
        tensors["loss" + suffix] = loss.detach().reshape(1)
        for k, p in model.named_parameters():
            tensors["grad%s.%s" % (suffix, k)] = p.grad
    save_safetensors(out, tensors)


def time_workloads(names, iters, warmup, threads):
    sys.path.insert(0, PEERS)
    import torch_bench as tb
    torch.set_num_threads(threads)

    class A:
        pass
    a = A()
    a.iters, a.warmup, a.flops_only, a.detail = iters, warmup, False, False
    for n in names:
        try:
            r = tb.bench_net(n, a)
            print("%s %.6f %d" % (n, r["step_median_s"], iters), flush=True)
        except Exception as e:  # one failing workload does not stop the others
            print("%s NA %s" % (n, type(e).__name__), flush=True)


def main():
    args = sys.argv[1:]
    if len(args) >= 3 and args[0] == "export":
        export(args[1], args[2])
    elif args and args[0] == "time":
        opt = {"--iters": 5, "--warmup": 2, "--threads": int(os.environ.get("BENCH_THREADS", 2))}
        names = []
        i = 1
        while i < len(args):
            if args[i] in opt:
                opt[args[i]] = int(args[i + 1])
                i += 2
            else:
                names.append(args[i])
                i += 1
        time_workloads(names or ["lenet", "unet2d", "unet3d", "deepmedic", "lstm"],
                       opt["--iters"], opt["--warmup"], opt["--threads"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

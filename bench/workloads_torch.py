#!/usr/bin/env python3
"""The PyTorch side of the workload benchmarks and of their parity check.

    workloads_torch.py export NAME OUT.safetensors [--small]
        builds NAME as ../shared/peers/torch_bench.py does, runs one training
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
        torch_bench.py's own timing.
"""
import json, os, struct, sys
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("LUMEN_PEERS", os.path.join(HERE, "..", "..", "shared", "peers"))
sys.path.insert(0, PEERS)
import torch_bench as tb  # noqa: E402

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


def small_inputs(name, model, inputs, target):
    """Smaller inputs for the specs (same networks)."""
    g = torch.Generator().manual_seed(1)
    if name == "lenet":
        return (torch.randn(4, 1, 64, 64, generator=g),), torch.randint(0, 2, (4,), generator=g)
    if name == "unet2d":
        x = torch.randn(2, 1, 32, 32, generator=g)
        return (x,), (x[:, 0] > 0.5).long()
    if name == "unet3d":
        x = torch.randn(1, 1, 16, 16, 16, generator=g)
        return (x,), (x[:, 0] > 0.5).long()
    if name == "deepmedic":
        xn, xs = torch.randn(2, 1, 25, 25, 25, generator=g), torch.randn(2, 1, 19, 19, 19, generator=g)
        return (xn, xs), (xn[:, 0, 8:17, 8:17, 8:17] > 0.5).long()
    if name == "lstm":
        return (torch.randn(4, 30, 256, generator=g),), torch.randint(0, 12, (4,), generator=g)
    raise ValueError(name)


def export(name, out, small):
    torch.set_num_threads(2)
    model, inputs, target, loss_fn, _ = tb.build(name)
    if small:
        inputs, target = small_inputs(name, model, inputs, target)
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
        export(args[1], args[2], "--small" in args)
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

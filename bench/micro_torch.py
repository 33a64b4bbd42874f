"""micro_torch.py - the PyTorch side of the benchmarks that bench/run.sh runs.

    /usr/bin/python3 bench/micro_torch.py [case ...]     (no cases: all)

Prints one line per case, in the same format as bench/micro.lua:
    <case> <median seconds> <timed iterations>
    <case> NA <reason>
The cases mirror micro.lua's registry one for one (same names, same inputs).
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

WARMUP = int(os.environ.get("BENCH_WARMUP", 2))
MIN_ITERS, MAX_ITERS = 5, 100
MIN_TIME = float(os.environ.get("BENCH_MIN_TIME", 0.5))
N = 2 ** 24

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 2)))
torch.set_grad_enabled(False)


def measure(fn):
    for _ in range(WARMUP):
        r = fn()
        del r
    times, total = [], 0.0
    while (len(times) < MIN_ITERS or total < MIN_TIME) and len(times) < MAX_ITERS:
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        del r  # freed outside the timed region, as micro.lua does
        times.append(dt)
        total += dt
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
    return med, n


def lin(a, b, n):
    return torch.linspace(a, b, n, dtype=torch.float32)


def matmul_exp(a, b):
    m = torch.matmul(a, b)
    r = torch.exp(m)
    del m
    return r


def train_step(x, w, b, g, conv):
    with torch.enable_grad():
        x.grad = w.grad = b.grad = None
        y = conv(x, w, b, padding=1)
        y.backward(g)


def grad_leaf(t):
    return t.requires_grad_()


F = torch.nn.functional


def loss_inputs(c, grad=False):
    x = lin(-3, 3, 8 * c * 128 * 128).reshape(8, c, 128, 128).requires_grad_(grad)
    return (x, (lin(-1, 1, 8 * 128 * 128) > 0).long().reshape(8, 128, 128),
            lin(0, 1, 8 * c * 128 * 128).reshape(8, c, 128, 128))


def loss_grad(f):
    def run(x, t, p):
        with torch.enable_grad():
            loss = f(x, t, p)
            loss.backward()
        x.grad = None
        return loss.detach()
    return run


def layer_step(shape, fn):
    """A training step of a norm or softmax layer, as micro.lua's layer_step."""
    def setup():
        n, c = 1, shape[1]
        for v in shape:
            n *= v
        return (lin(-3, 3, n).reshape(shape), lin(1, -1, n).reshape(shape),
                lin(0.5, 1.5, c).requires_grad_(), lin(-0.5, 0.5, c).requires_grad_(),
                torch.zeros(c), torch.ones(c))

    def run(x, g, w, b, rm, rv):
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            y = fn(x, w, b, rm, rv)
            y.backward(g)
            del y
            return x
    return setup, run


# name -> (setup() -> inputs tuple, run(*inputs))
CASES = {
    "batch_norm_train_8x32x128x128_f32": layer_step(
        (8, 32, 128, 128), lambda x, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, True)),
    "batch_norm_train_2x16x64^3_f32": layer_step(
        (2, 16, 64, 64, 64), lambda x, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, True)),
    "group_norm_8g_8x32x128x128_f32": layer_step(
        (8, 32, 128, 128), lambda x, w, b, rm, rv: F.group_norm(x, 8, w, b)),
    "softmax_dim1_2x16x64^3_f32": layer_step(
        (2, 16, 64, 64, 64), lambda x, w, b, rm, rv: F.softmax(x, 1)),
    "matmul_1024_f32": (lambda: (lin(-1, 1, 1024 * 1024).reshape(1024, 1024),
                                 lin(1, -1, 1024 * 1024).reshape(1024, 1024)),
                        torch.matmul),
    "add_2^24_f32": (lambda: (lin(-3, 3, N), lin(3, -3, N)), torch.add),
    "exp_2^24_f32": (lambda: (lin(-3, 3, N),), torch.exp),
    "sum_2^24_f32": (lambda: (lin(-3, 3, N),), torch.sum),
    "transpose_copy_4096_f32": (lambda: (lin(-3, 3, 4096 * 4096).reshape(4096, 4096),),
                                lambda a: a.t().contiguous()),
    "matmul_exp_512_f32": (lambda: (lin(-1, 1, 512 * 512).reshape(512, 512),
                                    lin(1, -1, 512 * 512).reshape(512, 512)),
                           matmul_exp),
    "conv2d_64x32x32x32_to64_f32": (lambda: (lin(-1, 1, 64 * 32 * 32 * 32).reshape(64, 32, 32, 32),
                                             lin(-0.1, 0.1, 64 * 32 * 9).reshape(64, 32, 3, 3), lin(-1, 1, 64)),
                                    lambda x, w, b: F.conv2d(x, w, b, padding=1)),
    "conv3d_2x32x32^3_to32_f32": (lambda: (lin(-1, 1, 2 * 32 * 32 ** 3).reshape(2, 32, 32, 32, 32),
                                           lin(-0.1, 0.1, 32 * 32 * 27).reshape(32, 32, 3, 3, 3), lin(-1, 1, 32)),
                                  lambda x, w, b: F.conv3d(x, w, b, padding=1)),
    "conv_transpose2d_8x256x16x16_k2s2_f32": (lambda: (lin(-1, 1, 8 * 256 * 16 * 16).reshape(8, 256, 16, 16),
                                                       lin(-0.1, 0.1, 256 * 128 * 4).reshape(256, 128, 2, 2),
                                                       lin(-1, 1, 128)),
                                              lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2)),
    "conv2d_train_64x32x32x32_to64_f32": (lambda: (grad_leaf(lin(-1, 1, 64 * 32 * 32 * 32).reshape(64, 32, 32, 32)),
                                                   grad_leaf(lin(-0.1, 0.1, 64 * 32 * 9).reshape(64, 32, 3, 3)),
                                                   grad_leaf(lin(-1, 1, 64)),
                                                   lin(-1, 1, 64 * 64 * 32 * 32).reshape(64, 64, 32, 32), F.conv2d),
                                          train_step),
    "cross_entropy_8x2x128x128_f32": (lambda: loss_inputs(2),
                                      lambda x, t, p: torch.nn.functional.cross_entropy(x, t)),
    "cross_entropy_grad_8x2x128x128_f32": (lambda: loss_inputs(2, True),
                                           loss_grad(lambda x, t, p: torch.nn.functional.cross_entropy(x, t))),
    "bce_logits_grad_8x1x128x128_f32": (lambda: loss_inputs(1, True),
                                        loss_grad(lambda x, t, p: torch.nn.functional.binary_cross_entropy_with_logits(x, p))),
}


def main(names):
    for name in names or list(CASES):
        if name not in CASES:
            print("%s NA no such torch case" % name, flush=True)
            continue
        setup, run = CASES[name]
        try:
            inputs = setup()
            med, n = measure(lambda: run(*inputs))
            print("%s %.9f %d" % (name, med, n), flush=True)
        except Exception as e:  # report and go on with the other cases
            print("%s NA failed: %s" % (name, str(e).replace("\n", " ")), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

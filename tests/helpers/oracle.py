"""Evaluates PyTorch expressions for lumen's parity specs.

usage: python3 oracle.py DIR
DIR/cases.json lists cases: {"expr": "...", "inputs": {name: {"file", "dtype", "shape"}}}.
Each input is raw little-endian contiguous data. For each case the result
(a tensor, a number, or a tuple/list of them) is written as DIR/out_<i>_<k>.bin
and described in DIR/results.json: {"outputs": [{"file", "dtype", "shape"}]}
or {"error": "..."}.
"""
import json, os, sys
import numpy as np
import torch
import torch.nn.functional as F

DT = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "u8": np.uint8, "bool": np.bool_}
NAME = {np.dtype(v): k for k, v in DT.items()}


def load(d, spec):
    a = np.fromfile(os.path.join(d, spec["file"]), dtype=DT[spec["dtype"]])
    return torch.from_numpy(a.reshape(spec["shape"]).copy())


def grad_of(f, xs, g=None):
    """Output of f(*xs) and the gradients of sum(output * g) (g = ones when
    None) with respect to every floating input: (out, grad_1, ...)."""
    xs = [x.clone().requires_grad_(True) if x.is_floating_point() else x for x in xs]
    y = f(*xs)
    y.backward(torch.ones_like(y) if g is None else g)
    return [y] + [x.grad if x.is_floating_point() and x.grad is not None else torch.zeros_like(x) for x in xs]


def run_block(src, env):
    """run(src) in an expression: executes the Python statements src in the
    case's namespace (loops an expression cannot hold) and returns the
    value they leave in `result`."""
    exec(src, env)
    return env["result"]


def main(d):
    torch.set_num_threads(1)
    cases = json.load(open(os.path.join(d, "cases.json")))
    results = []
    for i, case in enumerate(cases):
        env = {"torch": torch, "F": F, "np": np, "grad_of": grad_of}
        env["run"] = lambda src, env=env: run_block(src, env)
        env.update({k: load(d, v) for k, v in case["inputs"].items()})
        try:
            r = eval(case["expr"], env)
        except Exception as e:  # the spec decides whether an error was expected
            results.append({"error": "%s: %s" % (type(e).__name__, e)})
            continue
        outs = []
        for k, x in enumerate(r if isinstance(r, (tuple, list)) else [r]):
            a = x.detach().numpy() if torch.is_tensor(x) else np.asarray(x)
            if a.dtype == np.float16:
                a = a.astype(np.float32)
            f = "out_%d_%d.bin" % (i, k)
            np.ascontiguousarray(a).tofile(os.path.join(d, f))
            outs.append({"file": f, "dtype": NAME[a.dtype], "shape": list(a.shape)})
        results.append({"outputs": outs})
    json.dump(results, open(os.path.join(d, "results.json"), "w"))


if __name__ == "__main__":
    main(sys.argv[1])

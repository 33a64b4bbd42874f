"""images_peer.py: the peer side of `sh bench/run.sh images` (see
bench/images.lua for the cases): nibabel reads the NIfTI file; scipy.ndimage
(map_coordinates, zoom) runs the augmentation; torch's DataLoader with 2
worker processes runs it ahead for the loader case."""
import os, sys, time, glob, statistics
import numpy as np
import scipy.ndimage as nd

N = 128
want = set(sys.argv[1:])
def on(name): return not want or name in want

def report(name, fn, iters):
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    print(f"{name} {statistics.median(times):.6f} {iters}", flush=True)

def rotation(rng, limit_deg):
    R = np.eye(3)
    for a, b in ((1, 2), (0, 2), (0, 1)):
        t = np.radians(rng.uniform(-limit_deg, limit_deg))
        m = np.eye(3)
        m[a, a], m[a, b], m[b, a], m[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
        R = R @ m
    return R

def augment(img, lab, rng):
    """random affine (rotation 15 degrees, zoom 0.85-1.25) + elastic
    (control grid every 16 voxels, 3 voxels, cubic) + noise 0.1"""
    shape = img.shape
    g = [int(np.ceil((s - 1) / 16)) + 3 for s in shape]
    coarse = rng.normal(0, 3, (3,) + tuple(g))
    disp = np.stack([nd.zoom(c, [s / n for s, n in zip(shape, g)], order=3) for c in coarse])
    A = rotation(rng, 15) / rng.uniform(0.85, 1.25)
    c = (np.array(shape) - 1) / 2
    p = np.indices(shape, dtype=np.float32) + disp.astype(np.float32) - c.reshape(3, 1, 1, 1)
    q = np.einsum('ab,b...->a...', A.astype(np.float32), p) + c.reshape(3, 1, 1, 1)
    out = nd.map_coordinates(img, q, order=1, mode='constant', cval=0.0)
    out_lab = nd.map_coordinates(lab, q, order=0, mode='constant', cval=0)
    out += rng.normal(0, 0.1, shape).astype(np.float32)
    return out, out_lab

if on('read_ch2'):
    import nibabel as nib
    root = os.environ.get('LUMEN_DATA') or os.path.expanduser('~/.cache/lumen')
    found = glob.glob(root + '/mricron-data/usr/share/mricron/templates/ch2.nii.gz')
    if found:
        report('read_ch2', lambda: np.asarray(nib.load(found[0]).dataobj), 7)
    else:
        print('read_ch2 NA ch2.nii.gz not in the cache (run: lumen data fetch colin27)')

rng = np.random.default_rng(1)
img = rng.standard_normal((N, N, N)).astype(np.float32)
lab = rng.integers(0, 4, (N, N, N)).astype(np.uint8)

if on('aug3d_128'):
    report('aug3d_128', lambda: augment(img, lab, rng), 5)

if on('loader_aug3d'):
    import torch
    from torch.utils.data import Dataset, DataLoader
    class Patches(Dataset):
        def __len__(self): return 10 ** 6
        def __getitem__(self, i):
            r = np.random.default_rng(i)
            a, b = augment(img, lab, r)
            return torch.from_numpy(a[None]), torch.from_numpy(b.astype(np.int64))
    dl = iter(DataLoader(Patches(), batch_size=2, num_workers=2, prefetch_factor=2))
    report('loader_aug3d', lambda: next(dl), 10)

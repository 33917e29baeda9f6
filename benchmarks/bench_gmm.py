"""Benchmark: pygpt.gmm.GaussianMixture against scikit-learn, same data, same settings.

Default case: N = 1,000,000 points, D = 3, K = 8, full covariances, k-means initialisation,
tol = 1e-3, float64 on CPU, both libraries on the same machine in the same run. Each side is
timed ``--repeats`` times (interleaved) and the best time is reported; the final mean
log-likelihood of both fits is printed so the speed is compared at equal quality.

    python benchmarks/bench_gmm.py                    # CPU, float64, against scikit-learn
    python benchmarks/bench_gmm.py --device cuda      # GPU fit (float32 unless --dtype float64)
    python benchmarks/bench_gmm.py --device cuda --scaling   # + GPU scaling curve, N = 1e4 .. 1e7

The scaling mode times only pygpt (scikit-learn at N = 1e7 would take minutes per point).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pygpt.gmm.mixture import GaussianMixture  # noqa: E402
from pygpt.gmm.synthetic import make_mixture  # noqa: E402


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA)"
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs)"


def _cpu_snapshot() -> tuple[float, float, float]:
    """(machine busy seconds, machine total seconds, this process's CPU seconds) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return (math.nan, math.nan, math.nan)
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    t = os.times()
    return ((sum(fields) - idle) / hz, sum(fields) / hz, t.user + t.system)


def other_load(before, after) -> float:
    """Share of the machine's CPU time used by other processes between two snapshots, in %."""
    busy, total, own = (a - b for a, b in zip(after, before))
    return 100.0 * max(busy - own, 0.0) / total if total > 0 else math.nan


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(X, args, dtype) -> tuple[float, GaussianMixture]:
    g = GaussianMixture(
        args.k, covariance_type=args.cov, init_params="kmeans", tol=args.tol, random_state=args.seed,
        device=args.device, dtype=dtype,
    )
    sync(args.device)
    t0 = time.perf_counter()
    g.fit(X)
    sync(args.device)
    return time.perf_counter() - t0, g


def time_sklearn(X, args):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    g = SkGaussianMixture(args.k, covariance_type=args.cov, init_params="kmeans", tol=args.tol, random_state=args.seed)
    t0 = time.perf_counter()
    g.fit(X)
    return time.perf_counter() - t0, g


def compare(args, dtype) -> int:
    X, _, _ = make_mixture(args.n, args.dim, args.k, spread=args.spread, scale=args.scale, seed=args.seed)
    Xdev = torch.from_numpy(X).to(args.device) if args.device.startswith("cuda") else X
    if args.device.startswith("cuda"):
        time_ours(Xdev[:20000], args, dtype)  # warm-up: CUDA context and kernels
    ours_times, sk_times = [], []
    ours = sk = None
    snap = _cpu_snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(args.repeats):
            t, ours = time_ours(Xdev, args, dtype)
            ours_times.append(t)
            if not args.skip_sklearn:
                t, sk = time_sklearn(X, args)
                sk_times.append(t)
    busy_others = other_load(snap, _cpu_snapshot())
    ll_ours = ours.score(X)
    print(f"device:            {device_name(args.device)}  [pygpt dtype {str(dtype).replace('torch.', '')}, "
          f"scikit-learn float64 on CPU]")
    print(f"threads:           torch {torch.get_num_threads()} available (pygpt runs CPU fits with "
          f"{ours.n_threads or 1}), scikit-learn default (OpenMP/BLAS)")
    print(f"other processes:   {busy_others:.1f}% of the machine's CPU time during the timed runs "
          f"(load average now {os.getloadavg()[0]:.2f})")
    print(f"problem:           N={args.n:,}  D={args.dim}  K={args.k}  covariance={args.cov}  init=kmeans  "
          f"tol={args.tol:g}  data: make_mixture(spread={args.spread:g}, scale={args.scale:g}, seed={args.seed})  "
          f"repeats={args.repeats} (best time reported)")
    print(f"pygpt.gmm:         {min(ours_times):8.3f} s  iterations={ours.n_iter_:3d}  converged={ours.converged_}  "
          f"mean log-likelihood={ll_ours:.6f}   runs: {', '.join(f'{t:.3f}' for t in ours_times)}")
    if args.skip_sklearn:
        return 0
    ll_sk = sk.score(X)
    print(f"scikit-learn:      {min(sk_times):8.3f} s  iterations={sk.n_iter_:3d}  converged={sk.converged_}  "
          f"mean log-likelihood={ll_sk:.6f}   runs: {', '.join(f'{t:.3f}' for t in sk_times)}")
    same = abs(ll_ours - ll_sk) <= args.ll_tol
    print(f"log-likelihood gap: {ll_ours - ll_sk:+.3e} (|gap| <= {args.ll_tol:g}: {'equal' if same else 'NOT equal'})")
    print(f"speed-up:          {min(sk_times) / min(ours_times):.2f}x (scikit-learn time / pygpt time)")
    return 0 if same else 1


def scaling(args, dtype) -> None:
    ns = [int(round(10 ** e)) for e in np.arange(4.0, math.log10(args.scaling_max) + 1e-9, 0.5)]
    print(f"\nscaling on {device_name(args.device)}: D={args.dim}  K={args.k}  covariance={args.cov}  "
          f"dtype={str(dtype).replace('torch.', '')}")
    print(f"{'N':>12} {'fit s':>9} {'iters':>6} {'s/iter':>9} {'Mpts*iter/s':>12} {'mean loglik':>12}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.device.startswith("cuda"):
            X0, _, _ = make_mixture(20000, args.dim, args.k, spread=args.spread, scale=args.scale, seed=args.seed)
            time_ours(torch.from_numpy(X0).to(args.device), args, dtype)  # warm-up
        for n in ns:
            X, _, _ = make_mixture(n, args.dim, args.k, spread=args.spread, scale=args.scale, seed=args.seed)
            Xdev = torch.from_numpy(X).to(args.device)
            del X
            t, g = time_ours(Xdev, args, dtype)
            it = max(g.n_iter_, 1)
            print(f"{n:>12,} {t:>9.3f} {g.n_iter_:>6d} {t / it:>9.4f} {n * it / t / 1e6:>12.2f} "
                  f"{g.lower_bound_:>12.5f}")
            del Xdev
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--cov", default="full", choices=("full", "tied", "diag", "spherical"))
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    # Overlapping components (means in [-5, 5]^3, standard deviations 0.6..2): EM needs several
    # iterations, as on real data, instead of converging at once on far-apart blobs.
    p.add_argument("--spread", type=float, default=5.0, help="half-width of the box of true means")
    p.add_argument("--scale", type=float, default=2.0, help="scale of the true standard deviations")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (pygpt side; scikit-learn is CPU-only)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="pygpt dtype (default: float64 on CPU, float32 on CUDA)")
    p.add_argument("--ll-tol", type=float, default=1e-3, help="max |mean log-likelihood gap| to call the fits equal")
    p.add_argument("--skip-sklearn", action="store_true", help="time pygpt only")
    p.add_argument("--scaling", action="store_true", help="also time pygpt for N = 1e4 .. --scaling-max")
    p.add_argument("--scaling-max", type=float, default=1e7)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    if args.dtype is None:
        dtype = torch.float64 if args.device == "cpu" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    rc = compare(args, dtype)
    if args.scaling:
        scaling(args, dtype)
    return rc


if __name__ == "__main__":
    sys.exit(main())

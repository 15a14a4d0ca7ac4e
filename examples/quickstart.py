"""Monte Carlo estimate of pi on the embedded local cluster: the Ray Core API, unchanged.

    python examples/quickstart.py
"""

import time

import numpy as np

import starburst as ray


@ray.remote
def sample(seed: int, n: int) -> int:
    """Count random points of the unit square that fall inside the quarter circle."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    inside = int(((xy**2).sum(axis=1) <= 1.0).sum())
    print(f"batch {seed}: {inside}/{n} inside")
    return inside


@ray.remote
def column_means(grid: np.ndarray) -> np.ndarray:
    """A large array argument: passed through the object store, read in place (zero-copy)."""
    return grid.mean(axis=0)


def main() -> None:
    start = time.perf_counter()
    ray.init()
    batches, n = 16, 250_000
    counts = ray.get([sample.remote(seed, n) for seed in range(batches)])
    estimate = 4 * sum(counts) / (batches * n)

    grid = np.arange(4_000_000, dtype=np.float64).reshape(1000, 4000)  # 32 MB
    grid_ref = ray.put(grid)
    means = ray.get(column_means.remote(grid_ref))
    assert np.allclose(means, grid.mean(axis=0))

    print(f"pi ~= {estimate:.4f} from {batches * n:,} samples in {len(counts)} tasks")
    print(f"column means of a {grid.nbytes / 2**20:.0f} MiB array computed remotely: OK")
    print(f"done in {time.perf_counter() - start:.2f} s (cluster start included)")
    ray.shutdown()


if __name__ == "__main__":
    main()

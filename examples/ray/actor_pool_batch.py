"""Batch inference with an ActorPool: a few actors each load a "model" once, then the pool feeds
them batches, one at a time per actor, and collects the predictions in order (and, for a second
pass, as they finish).

Run it on starburst, unmodified:   starburst run examples/ray/actor_pool_batch.py
"""

import os
import time

import numpy as np

import ray
from ray.util import ActorPool


@ray.remote
class Model:
    def __init__(self, seed: int):
        time.sleep(0.2)  # stands for loading weights from disk
        self.weights = np.random.default_rng(seed).normal(size=(16, 3))
        self.batches_seen = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches_seen += 1
        return (batch @ self.weights).argmax(axis=1)

    def stats(self):
        return os.getpid(), self.batches_seen


def main() -> None:
    ray.init()
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(64, 16)) for _ in range(24)]
    # The same weights in every actor (same seed), so any actor's answer is the right one.
    actors = [Model.remote(seed=42) for _ in range(3)]
    pool = ActorPool(actors)

    predictions = list(pool.map(lambda actor, batch: actor.predict.remote(batch), batches))
    reference = np.random.default_rng(42).normal(size=(16, 3))
    assert all((p == (b @ reference).argmax(axis=1)).all() for p, b in zip(predictions, batches))

    sizes = sorted(len(p) for p in pool.map_unordered(lambda a, b: a.predict.remote(b), batches[:6]))
    assert sizes == [64] * 6

    stats = ray.get([a.stats.remote() for a in actors])
    print(f"{len(predictions)} batches, {sum(len(p) for p in predictions)} predictions, "
          f"class counts {np.bincount(np.concatenate(predictions), minlength=3).tolist()}")
    for pid, seen in stats:
        print(f"  actor pid {pid}: {seen} batches")
    assert sum(seen for _, seen in stats) == len(batches) + 6
    ray.shutdown()


if __name__ == "__main__":
    main()

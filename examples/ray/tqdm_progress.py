"""Progress bars updated inside tasks and an actor, drawn by the driver (ray.experimental.tqdm_ray)."""

import time

import ray
from ray.experimental import tqdm_ray


@ray.remote
def crunch(name: str, steps: int) -> int:
    bar = tqdm_ray.tqdm(total=steps, desc=name)
    total = 0
    for i in range(steps):
        total += i * i
        time.sleep(0.005)
        bar.update(1)
    bar.close()
    return total


@ray.remote
class Loader:
    def load(self, n: int) -> int:
        for _ in tqdm_ray.tqdm(range(n), desc="loading"):
            time.sleep(0.005)
        return n


if __name__ == "__main__":
    ray.init()
    results = ray.get([crunch.remote(f"part {i}", 60) for i in range(3)])
    loader = Loader.remote()
    print("loaded", ray.get(loader.load.remote(40)), "records")
    print("sum of squares", sum(results))
    ray.shutdown()

"""Estimate pi by Monte Carlo sampling, Ray style: sampling tasks report progress to an actor.

Run it on starburst, unmodified:   starburst run examples/ray/monte_carlo_pi.py
(or: python -m starburst.compat run examples/ray/monte_carlo_pi.py)
"""

import math
import random
import time

import ray


@ray.remote
class ProgressActor:
    """Collects how many samples each task has drawn so far."""

    def __init__(self, total_samples: int):
        self.total_samples = total_samples
        self.done_by_task = {}

    def report(self, task_id: int, num_samples_done: int) -> None:
        self.done_by_task[task_id] = num_samples_done

    def progress(self) -> float:
        return sum(self.done_by_task.values()) / self.total_samples


@ray.remote
def sampling_task(num_samples: int, task_id: int, progress_actor) -> int:
    rng = random.Random(task_id)
    inside = 0
    for i in range(num_samples):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1:
            inside += 1
        if (i + 1) % 50_000 == 0:
            progress_actor.report.remote(task_id, i + 1)
    progress_actor.report.remote(task_id, num_samples)
    return inside


def main() -> None:
    ray.init()
    num_tasks, samples_per_task = 8, 200_000
    total = num_tasks * samples_per_task
    progress = ProgressActor.remote(total)
    refs = [sampling_task.remote(samples_per_task, i, progress) for i in range(num_tasks)]

    while True:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        fraction = ray.get(progress.progress.remote())
        print(f"progress: {fraction:.0%}")
        if len(ready) == len(refs):
            break

    inside = sum(ray.get(refs))
    # Reports are fire-and-forget (.remote() without get): give the last few a moment to land.
    time.sleep(0.1)
    final = ray.get(progress.progress.remote())
    pi = 4 * inside / total
    print(f"estimated pi = {pi:.4f} from {total:,} samples (error {abs(pi - math.pi):.4f}); "
          f"final progress {final:.0%}")
    assert abs(pi - math.pi) < 0.01, pi
    ray.shutdown()


if __name__ == "__main__":
    main()

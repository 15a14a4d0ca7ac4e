"""A synchronous parameter server: an actor holds the weights of a linear model; each round, worker
tasks compute gradients on their shard of the data against the current weights, and the actor
applies their average.

Run it on starburst, unmodified:   starburst run examples/ray/parameter_server.py
"""

import numpy as np

import ray

NUM_WORKERS = 4
DIM = 10


@ray.remote
class ParameterServer:
    def __init__(self, dim: int, learning_rate: float):
        self.weights = np.zeros(dim)
        self.learning_rate = learning_rate

    def apply_gradients(self, *gradients):
        self.weights -= self.learning_rate * np.mean(gradients, axis=0)
        return self.weights

    def get_weights(self):
        return self.weights


@ray.remote
def compute_gradient(weights, features, targets):
    predictions = features @ weights
    return 2 * features.T @ (predictions - targets) / len(targets)


@ray.remote
def loss(weights, features, targets) -> float:
    return float(np.mean((features @ weights - targets) ** 2))


def main() -> None:
    ray.init()
    rng = np.random.default_rng(0)
    true_weights = rng.normal(size=DIM)
    features = rng.normal(size=(4000, DIM))
    targets = features @ true_weights + 0.01 * rng.normal(size=4000)
    # Put each worker's shard in the object store once; tasks receive it by reference.
    shards = [(ray.put(f), ray.put(t)) for f, t in zip(np.array_split(features, NUM_WORKERS),
                                                       np.array_split(targets, NUM_WORKERS))]
    all_features, all_targets = ray.put(features), ray.put(targets)

    server = ParameterServer.remote(DIM, learning_rate=0.1)
    weights = server.get_weights.remote()
    for step in range(60):
        gradients = [compute_gradient.remote(weights, f, t) for f, t in shards]
        weights = server.apply_gradients.remote(*gradients)
        if step % 20 == 0:
            print(f"step {step:3d}  loss {ray.get(loss.remote(weights, all_features, all_targets)):.5f}")

    final = ray.get(server.get_weights.remote())
    final_loss = ray.get(loss.remote(final, all_features, all_targets))
    error = float(np.max(np.abs(final - true_weights)))
    print(f"final loss {final_loss:.5f}, max weight error {error:.4f}")
    assert error < 0.05, error
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Ray's DAG API with the import paths Ray programs use (ray.dag.input_node, ray.dag.output_node),
run unchanged by ``starburst run``."""

import ray
from ray.dag.input_node import InputNode
from ray.dag.output_node import MultiOutputNode


@ray.remote
def preprocess(x):
    return x * 2


@ray.remote
class Model:
    def __init__(self, bias):
        self.bias = bias

    def predict(self, x):
        return x + self.bias


if __name__ == "__main__":
    ray.init(num_cpus=2)
    model = Model.bind(100)
    with InputNode() as inp:
        features = preprocess.bind(inp)
        dag = MultiOutputNode([model.predict.bind(features), features])
    print("dag outputs:", ray.get(dag.execute(21)))
    ray.shutdown()

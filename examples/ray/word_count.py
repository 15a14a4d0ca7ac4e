"""Word count as map-reduce with Ray tasks: map tasks count words per document chunk and split the
counts by reducer; reduce tasks merge their partition. Object refs flow between the two stages
without passing through the driver.

Run it on starburst, unmodified:   starburst run examples/ray/word_count.py
"""

import collections
import random

import ray

NUM_MAPPERS = 4
NUM_REDUCERS = 3


def make_corpus(num_docs: int = 400, seed: int = 7) -> list:
    rng = random.Random(seed)
    vocabulary = ("ray starburst task actor object ref cluster node head executor queue pool "
                  "future remote get wait put cancel").split()
    weights = [len(vocabulary) - i for i in range(len(vocabulary))]  # a skewed distribution
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(20, 60))) for _ in range(num_docs)]


@ray.remote(num_returns=NUM_REDUCERS)
def map_words(documents: list):
    partitions = [collections.Counter() for _ in range(NUM_REDUCERS)]
    for doc in documents:
        for word in doc.lower().split():
            partitions[sum(map(ord, word)) % NUM_REDUCERS][word] += 1
    return tuple(partitions)


@ray.remote
def reduce_words(*partials) -> dict:
    total = collections.Counter()
    for partial in partials:
        total.update(partial)
    return dict(total)


def main() -> None:
    ray.init()
    corpus = make_corpus()
    chunks = [corpus[i::NUM_MAPPERS] for i in range(NUM_MAPPERS)]
    # map_outputs[m][r]: the ref of mapper m's partition for reducer r
    map_outputs = [map_words.remote(chunk) for chunk in chunks]
    reduce_refs = [reduce_words.remote(*[outputs[r] for outputs in map_outputs])
                   for r in range(NUM_REDUCERS)]
    counts = {}
    for partition in ray.get(reduce_refs):
        counts.update(partition)

    expected = collections.Counter(w for doc in corpus for w in doc.split())
    assert counts == dict(expected), "map-reduce disagrees with a local count"
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    print(f"{sum(counts.values())} words, {len(counts)} distinct, in {len(corpus)} documents")
    for word, n in top:
        print(f"  {word:<10} {n}")
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Ray generators, run unchanged by ``starburst run``: a task and an async actor method that
``yield`` stream their items (no num_returns needed), ``ray.wait`` takes the generator, and a
num_returns=N generator that fails part-way keeps the values it yielded."""

import asyncio

import ray


@ray.remote
def squares(n):
    for i in range(n):
        yield i * i


@ray.remote
class Tokenizer:
    async def tokens(self, text):
        for word in text.split():
            await asyncio.sleep(0)
            yield word.upper()


@ray.remote(num_returns=3)
def two_of_three():
    yield "first"
    yield "second"
    raise RuntimeError("the third value could not be computed")


if __name__ == "__main__":
    ray.init(num_cpus=2)
    gen = squares.remote(5)
    ready, _ = ray.wait([gen], num_returns=1)
    assert ready == [gen]
    print("squares:", [ray.get(ref) for ref in gen])
    print("tokens:", " ".join(ray.get(ref) for ref in Tokenizer.remote().tokens.remote("stream these words")))
    first, second, third = two_of_three.remote()
    try:
        ray.get(third)
    except RuntimeError as exc:
        print(f"kept {ray.get([first, second])}, third raised: {exc.args[0]}")
    ray.shutdown()

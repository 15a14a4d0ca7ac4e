"""Cancelling a running call of an async actor, run unchanged by ``starburst run``: the call's
asyncio task is cancelled and the caller gets TaskCancelledError; the actor keeps serving."""

import asyncio

import ray


@ray.remote
class Poller:
    def __init__(self):
        self.started = asyncio.Event()
        self.cancelled = 0

    async def poll_forever(self):
        self.started.set()
        try:
            while True:
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def wait_started(self):
        await self.started.wait()

    async def cancelled_calls(self):
        return self.cancelled


if __name__ == "__main__":
    ray.init(num_cpus=1)
    poller = Poller.remote()
    ref = poller.poll_forever.remote()
    ray.get(poller.wait_started.remote())
    ray.cancel(ref)
    try:
        ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        print("cancelled; the actor saw", ray.get(poller.cancelled_calls.remote()), "cancellation")
    ray.shutdown()

"""How actors end in Ray, run unchanged by ``starburst run``: ``sys.exit()`` in a method is a crash
(the actor is restarted while max_restarts allows), ``ray.actor.exit_actor()`` ends it for good."""

import os
import sys
import time

import ray


@ray.remote(max_restarts=1)
class Service:
    def pid(self):
        return os.getpid()

    def crash(self):
        sys.exit(1)

    def retire(self):
        ray.actor.exit_actor()


def when_available(method):
    """Ray fails a call made while the actor restarts (ActorUnavailableError); call again."""
    for _ in range(600):
        try:
            return ray.get(method.remote())
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.05)
    raise RuntimeError("the actor did not come back")


if __name__ == "__main__":
    ray.init(num_cpus=2)
    service = Service.remote()
    before = ray.get(service.pid.remote())
    try:
        ray.get(service.crash.remote())
    except ray.exceptions.RayActorError as exc:
        print("crash:", type(exc).__name__)
    print("restarted:", when_available(service.pid) != before)
    try:
        ray.get(service.retire.remote())
    except ray.exceptions.ActorDiedError:
        print("retired")
    try:
        ray.get(service.pid.remote())
    except ray.exceptions.ActorDiedError:
        print("not restarted after exit_actor")
    ray.shutdown()

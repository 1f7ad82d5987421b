"""Replace a simulation worker that died, so the run keeps its workers (simulation only).

Flower 1.41's Ray actor pool creates its ClientApp actors without ``max_restarts`` and,
when a task fails, puts the actor that ran it back in the pool, dead or alive: after a
worker is killed (by the kernel's out-of-memory killer, or ``fault-kind = kill``) every
later message that actor takes fails at once (measured: 6, 9 and 9 of 10 clients failed
in three rounds where 5, 4 and 3 kills were drawn). Flower's federation config cannot set
the actors' restarts.

:func:`install` wraps ``BasicActorPool.fetch_result_and_return_actor_to_pool``: when the
result is a ``RayActorError`` (the actor died), a new actor is created with the pool's own
``create_actor_fn`` and goes back in the dead one's place; the error still reaches Flower,
which replies to the server with it, so the client counts as failed. A wrapper, not a copy:
Flower's code runs unchanged otherwise. The ServerApp calls it at import, in the
simulation process that also holds the pool (methods are looked up on the class, so the
existing pool is covered). Without Ray (a deployment), it does nothing.
"""

from __future__ import annotations

from logging import WARNING

from flwr.common.logger import log

_MARK = "_fedsim_replaces_dead_actors"


def install() -> bool:
    """Wrap the pool's fetch once; False where there is no Ray actor pool to wrap."""
    try:
        import ray
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool
    except ImportError:
        return False
    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool
    if getattr(fetch, _MARK, False):
        return True

    def fetch_result_and_return_actor_to_pool(self, future):
        try:
            return fetch(self, future)
        except ray.exceptions.RayActorError:
            factory, dead = getattr(self, "create_actor_fn", None), self._future_to_actor.get(future)
            if factory is None or dead is None:  # not the pool this was written for: Flower's behaviour
                raise
            try:
                ray.kill(dead, no_restart=True)
            except Exception:  # already gone
                pass
            # Flower's error path puts "the actor of this future" back in the pool: the new one
            self._future_to_actor[future] = factory()
            log(WARNING, "a simulation worker died (killed, e.g. out of memory); its client counts as failed "
                "and a new worker takes its place")
            raise

    setattr(fetch_result_and_return_actor_to_pool, _MARK, True)
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_result_and_return_actor_to_pool
    return True

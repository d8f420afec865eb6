"""Ray Serve 2.60's multiplexed routing and per-replica LRU, re-implemented as a policy."""

from __future__ import annotations

import random
from collections.abc import Iterator
from collections.abc import Sequence

from scheduler._eviction import LRUEviction
from scheduler._policies._common import pow2_pair
from scheduler._policies._common import require_positive
from scheduler._policies._common import require_replicas
from scheduler._types import AdapterDemand
from scheduler._types import EvictionPolicy
from scheduler._types import ReplicaView

__all__ = ["RayMultiplexPolicy"]

# ray/llm/_internal/serve/constants.py: DEFAULT_MAX_ONGOING_REQUESTS = int(1e9), the
# default of Ray Serve LLM deployments (plain Serve deployments default to 5).
_RAY_LLM_MAX_ONGOING_REQUESTS = 1_000_000_000


class RayMultiplexPolicy:
    """What Ray Serve does today for ``multiplexed_model_id`` requests.

    Followed sources (ray 2.60.0, under ``site-packages/ray/serve/``):

    * ``_private/request_router/pow_2_router.py`` —
      ``PowerOfTwoChoicesRequestRouter.choose_replicas``: draws two distinct replicas
      uniformly from the candidate set (``i = randrange(n)``, ``j = randrange(n - 1)``,
      shifted past ``i``) and returns them as the one group.
    * ``_private/request_router/request_router.py`` —
      ``MultiplexMixin.apply_multiplex_routing``: the candidate set is, within the
      matching timeout (``RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S`` = 1 s,
      randomised to 1–2 s), the replicas reporting the model id; if none report it, or
      once the first try was rejected, the replicas with the fewest models
      (``_get_replica_ids_with_fewest_multiplexed_models``: every replica tied for the
      minimum count); after the timeout the fewest-models set once, then all replicas.
      ``RequestRouter._select_from_candidate_replicas``: of the pair, a replica accepts
      if its queue length is below ``max_ongoing_requests``; the lowest queue length
      among those that accept wins; if none accepts the router backs off and retries.
    * ``multiplex.py`` — ``_ModelMultiplexWrapper``: a per-replica ``OrderedDict`` LRU;
      a hit moves the model to the end, a miss at ``max_num_models_per_replica`` first
      ``unload_model_lru`` (pops the least recently used); the replica reports
      ``_get_loading_and_loaded_model_ids`` (loaded *and* loading ids), pushed every
      ``PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S`` = 0.1 s through the controller.

    Mapping onto a :class:`ReplicaView`: a replica's model ids are ``gpu | loading``
    (Ray has no host or disk tier, so those are ignored); ``max_num_models_per_replica``
    is the replica's ``gpu_slots``, and :meth:`new_eviction_policy` is the LRU. One
    ranking stands for Ray's retry loop, which redraws pairs until one has a replica
    that accepts: the ranking is a pow-2 pair (lower load first) drawn from the
    accepting replicas of the first stage that has any (holders, else fewest models,
    else all). When everyone accepts this is exactly Ray's draw. If no replica accepts
    anywhere, the pair is drawn from the first stage, where the request waits (Ray
    waits in the router instead). The timeout is not modelled as time: the "all
    replicas" stage is reached only when both earlier stages are full. Like Ray's
    ``choose_replicas`` the ranking is that one group. Base-model requests draw from
    all replicas.

    ``max_ongoing_requests`` defaults to Ray Serve LLM's (effectively unbounded), under
    which holders always accept.

    Failure modes (the ones loramux is measured against): a hot adapter stays on the one
    replica that holds it while others idle (ray #48741, #65691); a burst for a cold
    adapter scatters loads over the fewest-models replicas before the first load is
    reported; "fewest models" ignores load; each router has its own stale view.
    """

    name = "ray_multiplex"

    def __init__(
        self, *, seed: int = 0, max_ongoing_requests: int = _RAY_LLM_MAX_ONGOING_REQUESTS
    ) -> None:
        require_positive("max_ongoing_requests", max_ongoing_requests, policy=self.name)
        self.max_ongoing_requests = max_ongoing_requests
        self._rng = random.Random(seed)

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        return [self._first_accepting(self._stages(adapter.key, replicas))]

    @staticmethod
    def _stages(key: str, replicas: Sequence[ReplicaView]) -> Iterator[Sequence[ReplicaView]]:
        """Candidate sets in the order Ray's retries reach them, computed on demand."""
        if key:
            holders = [r for r in replicas if key in r.gpu or key in r.loading]
            if holders:
                yield holders
            counts = [len(r.gpu) + len(r.loading) for r in replicas]
            fewest_count = min(counts)
            yield [r for r, count in zip(replicas, counts, strict=True) if count == fewest_count]
        yield replicas

    def _first_accepting(self, stages: Iterator[Sequence[ReplicaView]]) -> list[ReplicaView]:
        """A pow-2 pair from the first stage with replicas that accept, those first.

        If no replica of any stage accepts, the request waits on a pair of the first.
        """
        limit = self.max_ongoing_requests
        first: Sequence[ReplicaView] = ()
        for stage in stages:
            first = first or stage
            accepting = [r for r in stage if r.in_flight + r.queued < limit]
            if accepting:
                return pow2_pair(self._rng, accepting)
        return pow2_pair(self._rng, first)

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        """Stateless: Ray's router reads the replicas' reported model ids and queues."""

    def new_eviction_policy(self) -> EvictionPolicy:
        """The per-replica LRU of ``_ModelMultiplexWrapper``."""
        return LRUEviction()

"""Ray wrapper of the fine stage: :class:`MatchActor` holds no math, it is :class:`~actors.selection.matcher.Matcher`
living in an actor (its device and feature-map cache persist across queries)."""

from __future__ import annotations

import ray

from actors.selection.matcher import Matcher


@ray.remote(max_restarts=3, max_task_retries=3)  # re-ranking is read-only: a retried call is safe
class MatchActor(Matcher):
    """:class:`Matcher` as a Ray actor: owns a device and a feature-map cache across queries.

    Create with ``MatchActor.options(num_cpus=…, num_gpus=…).remote(ws, model)`` (asks from
    :class:`actors.core.runtime.Resources`), call ``actor.rerank.remote(objects, image_ids, top_k)``.
    """


__all__ = ["MatchActor"]

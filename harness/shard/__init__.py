"""``harness shard``: pre-sharded checkpoints for TP, verified complete before they are used.

:mod:`~harness.shard.store` (where copies live, their metadata, choosing one for a plan),
:mod:`~harness.shard.verify` (the shard against the source checkpoint),
:mod:`~harness.shard.vllm_job` (vLLM's own ``save_sharded_state``, run by the engine's Python),
:mod:`~harness.shard.run` (the command).
"""

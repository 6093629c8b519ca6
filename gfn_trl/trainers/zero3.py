"""DeepSpeed ZeRO-3: a rollout's forwards run on weights gathered once.

Under ZeRO-3 each rank holds a shard of every large weight, and each forward gathers the weights it runs on from all
ranks (a collective, through hooks that DeepSpeed registers on every module), then releases them. The ranks must
therefore run the same number of forwards. A rollout's do not: decoding runs until the rank's own latents have
stopped, and the reward's passes follow the rank's data (suffix lengths decide whether suffix copies are scored, the
distinct rows how many chunks, empty latents skip the latent pass, LMs that cannot be packed take one pass per
prefix). With unequal counts gloo aborts ("collective mismatch") and NCCL hangs.

So the no-gradient forwards of a rollout run inside `gathered`: the full weights are gathered once, the engine's
per-module hooks are removed so that no forward gathers or releases anything, and at the end the hooks are restored
and the weights partitioned again. The forwards in between need no communication, whatever their number. This costs
the full model's weights on every rank for the duration of the rollout, as TRL's generation under ZeRO-3 does
(`trl.models.utils.unwrap_model_for_generation`, whose hook helpers are used here); the default reward, the policy
with its adapter disabled, runs on the same gathered weights. The teacher-forced pass with gradients stays under
ZeRO-3 (one forward and one backward per rank and micro-batch, whatever the shapes).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager


def is_partitioned(module) -> bool:
    """Whether DeepSpeed ZeRO-3 manages any parameter of `module` (a partitioned parameter carries a `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _engine_of(model, wrapped):
    """The DeepSpeed engine in `wrapped` that runs `model` (its hooks then gather `model`'s weights), or None."""
    import deepspeed

    if isinstance(wrapped, deepspeed.DeepSpeedEngine) and wrapped.module is model:
        return wrapped
    return None


@contextmanager
def gathered(models, wrapped=None, held: set | None = None):
    """Full weights of the ZeRO-3-partitioned `models` on every rank inside the block; a no-op for the others.

    Args:
        models: the modules whose forwards run inside the block (e.g. the policy; a separate reward LM).
        wrapped: the trainer's wrapped model; if it is the DeepSpeed engine of one of `models`, the engine's hooks
            are removed inside the block (otherwise the first forward would release the gathered weights and the
            next would gather them again, a collective per forward).
        held: ids of the modules already gathered by an enclosing block (DeepSpeed refuses nested gathers of the
            same parameters); updated here, so that blocks nest.
    Every rank must enter the block together (the gather is a collective), which holds wherever all ranks run the
    same rollout step.
    """
    held = set() if held is None else held
    with ExitStack() as stack:
        for model in models:
            if model is None or id(model) in held or not is_partitioned(model):
                continue
            import deepspeed

            from .._trl import add_hooks, remove_hooks

            stack.enter_context(deepspeed.zero.GatheredParameters(list(model.parameters())))
            held.add(id(model))
            stack.callback(held.discard, id(model))
            engine = _engine_of(model, wrapped)
            if engine is not None:
                remove_hooks(engine)
                stack.callback(add_hooks, engine)  # before the weights are partitioned again (callbacks run LIFO)
        yield

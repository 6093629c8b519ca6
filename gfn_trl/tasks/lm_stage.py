"""The tasks' optional first stage: the LM fully fine-tuned on task texts before any method starts.

The paper fine-tunes GPT-2 Large on whole training stories before infilling (the *story LM*); the arithmetic recipe's
CPU default fine-tunes SmolLM2 on held-out problems with their gold rationales (the *rationale LM*), because the
untuned 135M reward prefers short partial rationales to the gold one.  Both use this one function, from a task's
`prepare_model` hook (`gfn_trl.tasks.base.Task`): the result is the policy's start, the reward LM, the prompting
baselines and the evaluation likelihood alike, for every trainer (GFlowNet, PPO, SFT, GRPO, RLOO), so that the methods
are compared from the same LM.
"""

from __future__ import annotations

from collections.abc import Sequence


def stage_key(model, texts: Sequence[str], **settings) -> str:
    """A fingerprint of one stage: the starting weights (every parameter's bytes), their dtypes and device type (a
    bf16 or GPU run trains other weights from the same values as a float32 CPU run), the texts, the settings, and the
    versions of the libraries that train it (torch, transformers, TRL: an upgrade may train other weights, so it
    trains the stage anew instead of loading what older code made)."""
    import hashlib
    import json

    import torch
    import transformers
    import trl

    state = model.state_dict()
    dtypes = sorted({str(t.dtype) for t in state.values()})
    devices = sorted({t.device.type for t in state.values()})
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    h = hashlib.sha256(json.dumps({"texts": list(texts), "dtypes": dtypes, "devices": devices, "versions": versions,
                                   **settings}, sort_keys=True).encode())
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def finetune_lm(model, tokenizer, texts: Sequence[str], max_steps: int, learning_rate: float = 1e-4,
                batch_size: int = 8, seed: int = 0, output_dir: str | None = None, max_length: int = 128,
                name: str = "lm_stage", cache_dir: str | None = None):
    """Full fine-tuning of `model` on `texts` (language modelling on the whole text; TRL's `SFTTrainer`, which ends
    each text with the tokenizer's EOS unless it already ends with it) for `max_steps` steps of `batch_size` texts,
    constant learning rate, no warm-up, seeded by `seed`.  Returns the fine-tuned model in eval mode, its config's and
    generation config's BOS / EOS / PAD ids and `use_cache` as they were (the trainer aligns the ids to the
    tokenizer's and turns the cache off); `max_steps` 0 returns `model` as it is.

    `cache_dir`: the fine-tuned weights are saved there under a fingerprint of the starting weights, the texts and
    the settings (`stage_key`), and a later call with the same fingerprint loads them instead of training (the runs of
    one seed of a comparison, one per trainer, then share the stage's minutes).  The weights are the same either way
    (CPU training is deterministic), but the global random state after the call is not: a caller that caches must
    reseed after the stage, whichever path was taken.

    Under `accelerate launch` with N processes the stage trains data-parallel (TRL's SFTTrainer joins the launch) on
    the same global batches: `batch_size / N` texts per process, so that its weights are the one-process ones (to
    float rounding); a `batch_size` that N does not divide gets ceil(batch_size / N) per process, which is said.
    Only the main process writes the cache entry; the others wait for it.

    Raises:
        ValueError: `max_steps` < 0, `learning_rate` <= 0, no texts to train on, or a cache entry that cannot be
            loaded (truncated, not safetensors, or other weights' names or shapes): the error names the file to delete.
    """
    import tempfile

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ..models import config_kept
    from ..progress import progress_enabled

    if max_steps < 0:
        raise ValueError(f"The {name} stage needs max_steps >= 0, got {max_steps}.")
    if max_steps == 0:
        return model
    if not learning_rate > 0:
        raise ValueError(f"The {name} stage needs a learning rate > 0, got {learning_rate}.")
    if not texts:
        raise ValueError(f"The {name} stage has no texts to train on.")
    cached = None
    if cache_dir is not None:
        from pathlib import Path

        key = stage_key(model, texts, max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size,
                        seed=seed, max_length=max_length)
        cached = Path(cache_dir) / f"{name}-{key}.safetensors"
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise ValueError(f"The {name} stage's cache {cache_dir} is a file, not a folder: pass a folder.")
        if cached.exists():
            from safetensors.torch import load_model

            try:
                load_model(model, str(cached))
            except Exception as e:  # a truncated or foreign file: safetensors' own message names neither it nor the fix
                raise ValueError(f"The {name} stage's cache entry {cached} cannot be loaded ({type(e).__name__}: {e}); "
                                 "it is corrupt or holds other weights. Delete it (the stage then trains anew and "
                                 "saves it again).") from e
            print(f"The {name} stage: loaded from {cached} (same starting weights, texts and settings).")
            return model.eval()
    if cached is not None:  # an unusable cache folder fails now, not after the training
        cached.parent.mkdir(parents=True, exist_ok=True)
    from accelerate import PartialState

    state = PartialState()
    processes = state.num_processes  # > 1 under `accelerate launch`: SFTTrainer then trains data-parallel
    per_device = -(-batch_size // processes)
    if per_device * processes != batch_size and state.is_main_process:
        print(f"The {name} stage: {batch_size} texts a step do not divide among {processes} processes; each takes "
              f"{per_device}, so its batches ({per_device * processes} texts) differ from a one-process run's.")
    args = SFTConfig(
        output_dir=output_dir or tempfile.mkdtemp(prefix=f"{name}_"), max_steps=max_steps,
        per_device_train_batch_size=per_device, learning_rate=learning_rate, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=max(1, max_steps // 4), save_strategy="no", report_to="none", seed=seed,
        dataset_text_field="text", max_length=max_length, activation_checkpointing=False, bf16=False,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress_enabled(),  # the recipe's --disable_tqdm
    )
    # the stage changes the weights only (not the config's special ids and use_cache, which SFTTrainer sets), so that
    # the trained, the cached and the stage-less model are configured alike (a cached stage's never saw the trainer)
    with config_kept(model):
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": list(texts)}),
                             processing_class=tokenizer)
        trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cached is not None:
        from safetensors.torch import save_model

        if trainer.accelerator.is_main_process:  # one writer: ranks writing the same .partial would interleave
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial")
            save_model(model, str(partial))
            partial.replace(cached)  # a killed run leaves no half-written cache entry
        trainer.accelerator.wait_for_everyone()
    return model.eval()

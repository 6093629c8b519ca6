"""Asynchronous GFlowNet training: sampler processes draw (and score) latents ahead of the learner, with bounded
staleness.

A GFlowNet objective is off-policy: latents drawn by a policy a few optimizer steps old are valid training data (the
loss recomputes log q with the current weights; Hu et al. 2024 already train on tempered and replayed latents).  So
sampling, and scoring by the frozen reward LM, need not wait for the learner: `AsyncGFlowNetTrainer` runs them in
`num_sampler_processes` processes of their own while the learner computes the loss, backward and step.

The schedule, deterministic whatever the processes' speeds:

* at the start of optimizer step t the learner publishes its weights (version t: the weights after t steps) and asks
  for the micro-batches of steps up to t + k (k = `max_staleness`) that it has not asked for yet, pulling their rows
  from the data loader ahead of the HF Trainer's loop;
* a request is drawn with the weights current when it was made: a micro-batch of step s is sampled with version
  max(s - k, t0) (t0: the step the run, or the data loader's epoch, started at), so no latent is more than k steps
  stale, and k = 0 is the synchronous trainer (bit for bit: same seeds, same weights, same computation);
* the behaviour of each micro-batch (on-policy, tempered or replay, `GFlowNetTrainer._draw_behaviour`) is the
  counter-based draw of the synchronous trainer.  A replay micro-batch is sampled as well (the tempered fallback)
  only if one of its prompts had an empty replay bucket when it was requested; at its turn the learner replays if
  every bucket then holds latents, as the synchronous trainer does;
* a sampler process answers requests in order; requests go round-robin over the processes.

The transport is `torch.distributed` (gloo, one process group of the learner and its samplers; the processes are
started with `torch.multiprocessing`, spawn): point-to-point `isend`/`irecv` of the weights (the trainable tensors,
flattened per dtype), the pickled requests (rows, prompts, seeds, temperature) and fixed-shape result tensors, whose
receives the learner posts when it makes the request; at most (k + 1) × `gradient_accumulation_steps` results are in
flight (the queue).  A sampler process holds its own copy of the policy (and of a separate reward LM): it receives
the model pickled once (`cloudpickle`) when training starts, then only the trainable weights.

Reproducibility: for every k the run is a pure function of its seeds (the weights each micro-batch is drawn with are
fixed by the schedule, not by timing), and a run resumed from a checkpoint continues exactly: the checkpoint holds
the micro-batches requested ahead ((step, micro-batch, version) each, or none for a replay one) and the trainable
weights of those versions, and the resumed run requests them again with those weights before going on
(`tests/test_async_sampling.py`).  The cost: up to k copies of the trainable weights in each checkpoint (for LoRA,
small).  What is not reproduced: a change of `gradient_accumulation_steps` or of the data layout on resume (the
requests are then made again with the current weights, with a warning), and a different number of torch threads in
the sampler processes (floating-point sums may round differently, so latents at near-ties may differ).

Limits: one learner process (no DeepSpeed/FSDP/multi-GPU learner yet), no 4-bit policy or quantized separate reward
LM (they do not pickle to another process), and a script that starts training must guard it with
`if __name__ == "__main__":` (spawned processes import the main module).  With reward functions (`reward_funcs`) or
`lm_reward_weight != 1` the sampler processes sample only and the learner scores.
"""

from __future__ import annotations

import copy
import datetime
import functools
import os
import pickle
import tempfile
import time
import traceback
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..models import eval_mode
from .generation import GenerationBackend, GenerationRequest
from .gflownet_config import GFlowNetConfig
from .gflownet_trainer import GFlowNetTrainer
from .rollout_config import _check_number
from .rollout_trainer import logger

# Message kinds (learner -> sampler) and tags.  Every message gets tags of its own (no two messages share one, so no
# reliance on the transport's ordering between messages): learner -> sampler message m (counted per sampler) uses
# tags 64 m + j for its j-th tensor (j = 0: the header); the result of request r uses _RESULT_TAG + 8 r + j.
_WEIGHTS, _REQUEST, _STOP = 1, 2, 3
_RESULT_TAG = 1 << 30
# How long a process waits for the other side (a sampler between two requests: the learner may evaluate or save for
# long; a process that dies closes its connection, which the other side sees at once, whatever this says)
_TIMEOUT = datetime.timedelta(hours=12)
_ERROR_BYTES = 4096


# ---------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class AsyncGFlowNetConfig(GFlowNetConfig):
    r"""
    Configuration for [`AsyncGFlowNetTrainer`]: a [`GFlowNetConfig`] whose latents are drawn (and scored) by sampler
    processes ahead of the learner (`gfn_trl.trainers.async_sampling`).

    > Parameters that control the sampler processes

    max_staleness (`int`, *optional*, defaults to `1`):
        k: the micro-batches of optimizer step t are drawn with the weights after step t - k (at most k steps old; at
        the start of a run or of an epoch, fresher).  0 is the synchronous trainer (the sampler process then works
        in lock-step with the learner: the same latents and losses, bit for bit).  TRL's `AsyncGRPOConfig` name;
        >= 0.
    num_sampler_processes (`int`, *optional*, defaults to `1`):
        Sampler processes (each with its own copy of the policy); micro-batches go to them in turn.  >= 1.
    sampler_num_threads (`int`, *optional*):
        torch intra-op threads of each sampler process.  Defaults to the learner's `torch.get_num_threads()`.
    sampler_device (`str`, *optional*):
        Device of the sampler processes' models (e.g. `"cuda:1"`).  Defaults to the learner's device.
    """

    max_staleness: int = field(
        default=1,
        metadata={"help": "k: micro-batches of step t are drawn with the weights after step t - k (at most k steps "
                  "old); 0 is the synchronous trainer, bit for bit. >= 0."},
    )
    num_sampler_processes: int = field(
        default=1, metadata={"help": "Sampler processes, each with its own copy of the policy; >= 1."}
    )
    sampler_num_threads: int | None = field(
        default=None,
        metadata={"help": "torch threads of each sampler process. Default: the learner's torch.get_num_threads()."},
    )
    sampler_device: str | None = field(
        default=None, metadata={"help": "Device of the sampler processes (e.g. 'cuda:1'). Default: the learner's."}
    )

    def __post_init__(self):
        super().__post_init__()
        _check_number(self, "max_staleness", 0, integer=True)
        _check_number(self, "num_sampler_processes", 1, integer=True)
        _check_number(self, "sampler_num_threads", 1, integer=True, optional=True)


# ---------------------------------------------------------------------------------------------------------------------
# Weights as flat tensors (one per dtype), the same order on both sides


def _trainable(model) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _flatten(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """One flat CPU copy per dtype, in order of first appearance."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p.detach().reshape(-1))
    return [torch.cat(g).cpu() for g in groups.values()]


def _unflatten_into(params: list[torch.Tensor], flats: list[torch.Tensor]) -> None:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    with torch.no_grad():
        for group, flat in zip(groups.values(), flats):
            offset = 0
            for p in group:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()


# ---------------------------------------------------------------------------------------------------------------------
# The sampler process


def _autocast_factory(spec: dict):
    if spec["autocast_dtype"] is None:
        return nullcontext
    return functools.partial(torch.autocast, device_type=torch.device(spec["device"]).type,
                             dtype=spec["autocast_dtype"])


def _sampler_main(rank: int, world: int, init_method: str, spec_bytes: bytes) -> None:
    """A sampler process: receive weights and requests from the learner (rank 0), answer each request in order."""
    import cloudpickle

    # join the group first: a failure below then closes this process's connection, which the learner sees at once
    # (had it come before, the learner would wait for this process to join)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world, timeout=_TIMEOUT)
    try:
        spec = cloudpickle.loads(spec_bytes)
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        policy = spec["policy"].to(device).eval()
        reward = spec["reward"]
        if reward is not None:
            reward.policy = policy
            if reward.reward_model is not None:
                reward.reward_model.to(device).eval()
            reward.autocast = _autocast_factory(spec)
        autocast = _autocast_factory(spec)
        params = [p for _, p in _trainable(policy)]
        flats = _flatten(params)
        backend: GenerationBackend = spec["backend"]
        constraints, max_len = spec["constraints"], spec["constraints"].max_length
        version, message = spec["version"], 0
        while True:
            header = torch.empty(4, dtype=torch.long)
            dist.recv(header, src=0, tag=64 * message)
            kind, a, b, c = header.tolist()
            if kind == _STOP:
                break
            if kind == _WEIGHTS:
                for j, flat in enumerate(flats):
                    dist.recv(flat, src=0, tag=64 * message + 1 + j)
                _unflatten_into(params, [f.to(device) for f in flats])
                version = a
            elif kind == _REQUEST:
                payload = torch.empty(b, dtype=torch.uint8)
                dist.recv(payload, src=0, tag=64 * message + 1)
                req = pickle.loads(payload.numpy().tobytes())
                B = len(req["rows"])
                meta = torch.tensor([0, a, 0, version], dtype=torch.long)
                z_out = torch.full((B, max_len), constraints.stop_token_id, dtype=torch.long)
                l_out = torch.zeros(B, dtype=torch.long)
                r_out = torch.zeros(B, max_len + 1, dtype=torch.float32)
                err = torch.zeros(_ERROR_BYTES, dtype=torch.uint8)
                try:
                    request = GenerationRequest(req["rows"], req["prompt_ids"].to(device),
                                                req["prompt_mask"].to(device), req["temperature"], req["seeds"],
                                                version)
                    with torch.no_grad(), eval_mode(policy), autocast():
                        z, lengths = backend.generate(policy, constraints, request)
                    if c and reward is not None:
                        log_r = reward(req["rows"], z, lengths)
                        r_out[:, : log_r.shape[1]] = log_r.float().cpu()
                    z_out[:, : z.shape[1]] = z.cpu()
                    l_out.copy_(lengths.cpu())
                    meta[2] = z.shape[1]
                except Exception:  # noqa: BLE001 - reported to the learner, which raises it
                    text = traceback.format_exc().encode("utf-8")[-_ERROR_BYTES:]
                    err[: len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
                    meta[0] = 1
                for j, t in enumerate((meta, z_out, l_out, r_out, err)):
                    dist.send(t, dst=0, tag=_RESULT_TAG + 8 * a + j)
                if meta[0]:
                    break
            message += 1
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------------
# The learner's side


@dataclass
class _Pending:
    """A request in flight: its receive buffers and their works."""

    request_id: int
    sampler: int
    message: int
    step: int
    version: int
    buffers: tuple
    works: list
    scored: bool
    result: tuple | None = None  # once received (a gloo work must be waited on once only)


class SamplerPool:
    """The sampler processes and the learner's end of their process group (rank 0).

    Args:
        spec: what a sampler process needs (pickled with cloudpickle once): policy, reward, constraints, backend,
            device, threads, the weights' version.
        num_processes: sampler processes to start (ranks 1 .. n).
        trainable: the learner's trainable tensors, in the order the samplers' `_trainable` lists theirs.
    """

    def __init__(self, spec: dict, num_processes: int, trainable: list[torch.Tensor]):
        import cloudpickle

        if dist.is_available() and dist.is_initialized():
            raise RuntimeError("AsyncGFlowNetTrainer starts its own process group for the learner and its samplers, "
                               "but one is already initialised (a multi-process launch?). Run the learner as a single "
                               "process.")
        self.n, self.trainable = num_processes, trainable
        self.version = spec["version"]
        self.snapshots: dict[int, list[torch.Tensor]] = {self.version: _flatten(trainable)}
        self._next_request, self._turn = 0, 0
        self._messages = [0] * num_processes
        # per sampler: (message index, work, tensor) of the sends not yet known complete.  gloo's works only learn of
        # their completion in `wait()`, which is safe once the sampler has answered a later request.
        self._sends: list[list[tuple]] = [[] for _ in range(num_processes)]
        fd, self._init_file = tempfile.mkstemp(prefix="gfn_async_")
        os.close(fd)
        os.remove(self._init_file)  # the FileStore creates it
        init_method = f"file://{self._init_file}"
        spec_bytes = cloudpickle.dumps(spec)
        ctx = mp.get_context("spawn")
        self.processes = [ctx.Process(target=_sampler_main, args=(r, num_processes + 1, init_method, spec_bytes),
                                      daemon=True, name=f"gfn-sampler-{r}") for r in range(1, num_processes + 1)]
        for proc in self.processes:
            proc.start()
        dist.init_process_group("gloo", init_method=init_method, rank=0, world_size=num_processes + 1,
                                timeout=_TIMEOUT)
        self.closed, self.failed = False, False

    # -- sending
    def _send(self, sampler: int, tensors: list[torch.Tensor]) -> int:
        """Post the sends of one message (its tensors kept alive meanwhile); returns the message's index."""
        m = self._messages[sampler]
        self._messages[sampler] += 1
        for j, t in enumerate(tensors):
            self._sends[sampler].append((m, dist.isend(t, dst=sampler + 1, tag=64 * m + j), t))
        return m

    def _settle_sends(self, sampler: int, upto: int) -> None:
        """Complete the sends of messages <= `upto` to `sampler` (it has received them: it answered message upto)."""
        keep = []
        for m, work, t in self._sends[sampler]:
            if m <= upto:
                work.wait()
            else:
                keep.append((m, work, t))
        self._sends[sampler] = keep

    def publish(self, version: int, flats: list[torch.Tensor] | None = None) -> None:
        """Send the weights of `version` to every sampler (the learner's trainable tensors now, or `flats`); they
        are kept in `snapshots` (a checkpoint saves those its outstanding requests were made with)."""
        flats = _flatten(self.trainable) if flats is None else flats
        for s in range(self.n):
            self._send(s, [torch.tensor([_WEIGHTS, version, 0, 0], dtype=torch.long), *flats])
        self.version = version
        self.snapshots[version] = flats

    def forget_before(self, version: int) -> None:
        """Drop the kept weights of versions older than `version` (no outstanding request was made with them)."""
        for v in [v for v in self.snapshots if v < version]:
            del self.snapshots[v]

    def request(self, payload: dict, step: int, max_length: int, score: bool) -> _Pending:
        """Ask the next sampler (in turn) for one micro-batch; its result's receives are posted now."""
        rid, sampler = self._next_request, self._turn
        self._next_request += 1
        self._turn = (self._turn + 1) % self.n
        data = torch.frombuffer(bytearray(pickle.dumps(payload)), dtype=torch.uint8)
        message = self._send(sampler, [torch.tensor([_REQUEST, rid, data.numel(), int(score)], dtype=torch.long), data])
        B = len(payload["rows"])
        buffers = (torch.empty(4, dtype=torch.long), torch.empty(B, max_length, dtype=torch.long),
                   torch.empty(B, dtype=torch.long), torch.empty(B, max_length + 1, dtype=torch.float32),
                   torch.empty(_ERROR_BYTES, dtype=torch.uint8))
        works = [dist.irecv(t, src=sampler + 1, tag=_RESULT_TAG + 8 * rid + j) for j, t in enumerate(buffers)]
        return _Pending(rid, sampler, message, step, self.version, buffers, works, score)

    # -- receiving
    def wait(self, pending: _Pending) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """(z (B, T), lengths (B,), log_r (B, T + 1) or None, the weights' version it was drawn with)."""
        if pending.result is not None:
            return pending.result
        try:
            for w in pending.works:  # a sampler that dies closes its connection: the wait raises then
                w.wait()
        except RuntimeError as e:
            self.failed = True
            proc = self.processes[pending.sampler]
            proc.join(timeout=5)
            raise RuntimeError(f"Sampler process {pending.sampler + 1} stopped (exit code {proc.exitcode}) before "
                               f"answering request {pending.request_id}; its error is printed above ({e}).") from e
        self._settle_sends(pending.sampler, pending.message)
        meta, z, lengths, log_r, err = pending.buffers
        status, rid, T, version = meta.tolist()
        if status != 0:
            self.failed = True
            text = bytes(err.tolist()).rstrip(b"\0").decode("utf-8", "replace")
            raise RuntimeError(f"Sampler process {pending.sampler + 1} failed on request {rid}:\n{text}")
        T = int(lengths.max()) if lengths.numel() else 0
        pending.result = (z[:, :T].clone(), lengths, log_r[:, : T + 1].clone() if pending.scored else None, version)
        pending.buffers = ()
        return pending.result

    def close(self, pending: list[_Pending] = ()) -> None:
        """Let the samplers finish what was asked (their results are dropped), stop them and the process group."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self.failed:
                for p in pending:
                    self.wait(p)
                for s in range(self.n):
                    self._settle_sends(s, self._send(s, [torch.tensor([_STOP, 0, 0, 0], dtype=torch.long)]))
                for proc in self.processes:
                    proc.join(timeout=60)
        finally:
            for proc in self.processes:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=10)
            dist.destroy_process_group()
            if os.path.exists(self._init_file):
                os.remove(self._init_file)


@dataclass
class _Planned:
    """A micro-batch pulled from the data loader ahead of the HF Trainer's loop."""

    step: int
    micro: int
    rows: list
    pending: _Pending | None = None


class _AheadBackend:
    """The trainer's generation backend while sampler processes run: a request whose seeds and temperature match one
    made ahead gets that result (its log-rewards kept for `score_latents`); any other (evaluation) is decoded here."""

    def __init__(self, trainer: AsyncGFlowNetTrainer, local: GenerationBackend):
        self.trainer, self.local = trainer, local
        self.ready: dict[tuple, _Pending] = {}
        self.log_rewards: dict[int, torch.Tensor] = {}  # id(z) -> (B, S) precomputed log R

    def generate(self, model, constraints, request: GenerationRequest):
        pending = self.ready.pop((tuple(request.seeds), float(request.temperature)), None)
        if pending is None:
            return self.local.generate(model, constraints, request)
        t = self.trainer
        t0 = time.perf_counter()
        z, lengths, log_r, version = t._pool.wait(pending)
        device = request.prompt_ids.device
        z, lengths = z.to(device), lengths.to(device)
        if log_r is not None:
            self.log_rewards = {id(z): log_r.to(device)}
        t.record_metrics({"async/staleness": float(t.state.global_step - version),
                          "async/wait_seconds": time.perf_counter() - t0})
        return z, lengths


# ---------------------------------------------------------------------------------------------------------------------
# The trainer


class AsyncGFlowNetTrainer(GFlowNetTrainer):
    """[`GFlowNetTrainer`] whose latents are drawn, and scored, by sampler processes running ahead of the learner by
    at most `max_staleness` optimizer steps (`gfn_trl.trainers.async_sampling`).

    Takes the arguments of [`GFlowNetTrainer`] with an [`AsyncGFlowNetConfig`].  Logs `async/staleness` (steps
    between the weights a micro-batch was drawn with and those it trains) and `async/wait_seconds` (time the learner
    waited for it).

    Raises:
        ValueError: at `train()`, a setting the sampler processes cannot follow (several learner processes,
            DeepSpeed/FSDP, a 4-bit policy, a quantized reward LM).
    """

    _name = "AsyncGFlowNet"
    _config_class = AsyncGFlowNetConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pool: SamplerPool | None = None
        self._ahead: deque[_Planned] = deque()
        self._epoch_iterator = None
        self._assign = (0, 0)  # (step, micro-batch) of the next row batch pulled from the data loader
        self._resume_plan: dict | None = None  # what a checkpoint had requested ahead (`extra_state_dict`)

    # -- the pipeline's life
    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self._stop_samplers()

    def _stop_samplers(self) -> None:
        if self._pool is not None:
            pending = [p.pending for p in self._ahead if p.pending is not None]
            if isinstance(self.generation_backend, _AheadBackend):
                pending += list(self.generation_backend.ready.values())
            try:
                self._pool.close(sorted(pending, key=lambda p: p.request_id))
            finally:
                self._pool = None
                self._ahead.clear()
                self.generation_backend = self._local_backend

    def _check_async_settings(self) -> None:
        a = self.args
        problems = []
        if a.world_size > 1:
            problems.append(f"{a.world_size} learner processes (run one)")
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            problems.append("DeepSpeed or FSDP")
        if a.load_in_4bit:
            problems.append("a 4-bit policy (load_in_4bit)")
        if a.reward_model_quantization:
            problems.append(f"a {a.reward_model_quantization} reward LM")
        if problems:
            raise ValueError(f"AsyncGFlowNetTrainer's sampler processes cannot follow {', '.join(problems)}. Train "
                             "with GFlowNetTrainer (synchronous sampling) instead.")

    def _start_samplers(self) -> None:
        self._check_async_settings()
        a = self.args
        policy = self.accelerator.unwrap_model(self.model)
        score = getattr(self, "reward_functions", None) is None and getattr(a, "lm_reward_weight", 1.0) == 1.0 \
            and self.reward is not None
        reward = None
        if score:
            reward = copy.copy(self.reward)
            reward.autocast = None  # rebuilt in the sampler process (the accelerator's does not pickle)
        mp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.accelerator.mixed_precision))
        self._local_backend = self.generation_backend
        spec = {
            "policy": policy, "reward": reward, "constraints": self.constraints, "backend": self._local_backend,
            "device": a.sampler_device or str(self.accelerator.device), "autocast_dtype": mp_dtype,
            "threads": a.sampler_num_threads or torch.get_num_threads(), "version": self.state.global_step,
        }
        self._scores_ahead = score
        self._pool = SamplerPool(spec, a.num_sampler_processes, [p for _, p in _trainable(policy)])
        self.generation_backend = _AheadBackend(self, self._local_backend)

    # -- planning ahead
    @contextmanager
    def _at(self, step: int, micro: int):
        """The counters of micro-batch `micro` (1-based) of optimizer step `step`, as `_next_micro_batch` sets them,
        so that `_draw_behaviour` and `_key` give that micro-batch's draws."""
        saved = self.state.global_step, self._micro_index
        self.state.global_step, self._micro_index = step, micro
        try:
            yield
        finally:
            self.state.global_step, self._micro_index = saved

    def _request(self, planned: _Planned, needed: bool | None = None) -> None:
        """Ask for a planned micro-batch's latents if it will need fresh ones (`needed`: decided already, by the
        checkpoint this run resumes)."""
        k = self.args.num_generations
        with self._at(planned.step, planned.micro):
            mode, temperature = self._draw_behaviour()
            if needed is None:  # a replay micro-batch is replayed at its turn if its buckets hold latents now
                needed = mode != "replay" or not all(self.replay_buffer.entries(r["gfn_key"]) for r in planned.rows)
            if not needed:
                return
            expanded, _ = self.expand(planned.rows)
            prompt_ids, prompt_mask = self.prompt_batch(expanded)
            seeds = [self._key(r["gfn_key"], j % k) for j, r in enumerate(expanded)]
        payload = {"rows": expanded, "prompt_ids": prompt_ids.cpu(), "prompt_mask": prompt_mask.cpu(),
                   "temperature": temperature, "seeds": seeds}
        planned.pending = self._pool.request(payload, planned.step, self.constraints.max_length, self._scores_ahead)
        self.generation_backend.ready[(tuple(seeds), float(temperature))] = planned.pending

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The HF Trainer's per-step batch collection, `max_staleness` steps ahead: publish the weights, pull and
        request the micro-batches of steps up to t + k, return those of step t."""
        if self._pool is None:
            self._start_samplers()
        t, k, ga = self.state.global_step, self.args.max_staleness, self.args.gradient_accumulation_steps
        if epoch_iterator is not self._epoch_iterator:  # a new epoch (or run): nothing planned carries over
            self._epoch_iterator, self._epoch_done = epoch_iterator, False
            self._assign = (t, 1)
            self._drop_stale(t + 10**9)
        self._drop_stale(t)
        plan = self._take_resume_plan(t)
        if t > self._pool.version and not plan:
            self._pool.publish(t)
        while not self._epoch_done and (plan or self._assign[0] <= t + k):
            try:
                rows = next(epoch_iterator)
            except StopIteration:
                self._epoch_done = True
                break
            planned = _Planned(self._assign[0], self._assign[1], rows)
            step, micro = self._assign
            self._assign = (step, micro + 1) if micro < ga else (step + 1, 1)
            needed = None
            if plan and plan[0][:2] != (step, micro):  # another layout (e.g. a changed accumulation): plan anew
                logger.warning("The checkpoint's requests ahead do not match this run's micro-batches: they are made "
                               "again with the current weights.")
                plan = []
                if t > self._pool.version:
                    self._pool.publish(t)
            replaying = bool(plan)
            if replaying:  # what the interrupted run had requested, with the weights it had requested it with
                version = plan.pop(0)[2]
                needed = version >= 0
                if needed and version != self._pool.version:
                    self._pool.publish(version, self._resume_weights[version])
            self._request(planned, needed)
            self._ahead.append(planned)
            if replaying and not plan and t > self._pool.version:  # back to the current weights
                self._pool.publish(t)
        if self._ahead:
            versions = [p.pending.version for p in self._ahead if p.pending is not None]
            self._pool.forget_before(min(versions, default=self._pool.version))
        batch = []
        while self._ahead and self._ahead[0].step == t and len(batch) < num_batches:
            batch.append(self._ahead.popleft().rows)
        return batch, self._get_num_items_in_batch(batch, device)

    def _drop_stale(self, step: int) -> None:
        """Receive and drop the results of requests of steps before `step` that were not used (a replay micro-batch
        whose buckets filled meanwhile)."""
        ready = self.generation_backend.ready
        for key, pending in list(ready.items()):
            if pending.step < step:
                del ready[key]
                self._pool.wait(pending)

    # -- checkpoints
    def extra_state_dict(self) -> dict:
        """The replay buffer and, while sampler processes run, the micro-batches already requested ahead
        ((step, micro-batch, version or -1 when not requested) each) with the weights of those versions, so that a
        resumed run requests them again exactly as the interrupted one had."""
        state = super().extra_state_dict()
        if self._pool is not None:
            plan = [(p.step, p.micro, -1 if p.pending is None else p.pending.version) for p in self._ahead]
            used = {v for *_, v in plan if v >= 0}
            state["async_plan"] = {"steps": plan, "weights": {v: self._pool.snapshots[v] for v in used}}
        return state

    def load_extra_state_dict(self, state: dict) -> None:
        super().load_extra_state_dict(state)
        self._resume_plan = state.get("async_plan")

    def _take_resume_plan(self, step: int) -> list:
        """The checkpoint's requested-ahead micro-batches if this is the resumed run's first step (and the plan
        starts there), else []."""
        saved, self._resume_plan = self._resume_plan, None
        if not saved or not saved["steps"] or tuple(saved["steps"][0][:2]) != (step, 1) or self._assign != (step, 1):
            return []
        self._resume_weights = saved["weights"]
        return [tuple(entry) for entry in saved["steps"]]

    # -- scoring
    def score_latents(self, rows, z, lengths, final_only: bool = False, *args, **kwargs):
        """The sampler process's log-rewards when it scored these latents (`z` as the backend returned it), else
        `GFlowNetTrainer.score_latents`."""
        backend = self.generation_backend
        ahead = backend.log_rewards.pop(id(z), None) if isinstance(backend, _AheadBackend) else None
        if ahead is not None and not final_only:
            return ahead
        return super().score_latents(rows, z, lengths, final_only, *args, **kwargs)

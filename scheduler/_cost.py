"""Cost profiles for the simulator: what loading an adapter and running a batch step cost.

A :class:`CostProfile` holds every constant the simulator uses, each documented with where
it comes from. Profiles are looked up by name with :func:`cost_profile`; an unknown name
raises :class:`~scheduler.exceptions.UnknownProfileError` listing the known ones.

The model (all times in seconds):

* adapter bytes = ``rank * bytes_per_rank`` (rank 0 in a trace means ``default_rank``);
* S3 fetch = ``s3_latency_s + bytes / s3_bytes_per_s``, serialised per replica (one
  network link per replica, FIFO);
* disk read = ``disk_latency_s + bytes / disk_bytes_per_s``, serialised per replica;
* host to GPU copy = ``h2d_fixed_s + bytes / h2d_bytes_per_s``, serialised per replica
  (one copy engine);
* one continuous-batching step over ``b`` running sequences, ``p`` of whose prompt
  tokens are prefilled in this step = ``step_base_s + step_per_seq_s * b +
  prefill_per_token_s * p``; at most ``max_batch`` sequences run at once.

Failure mode: the step model is linear in the batch and ignores context length and the
number of distinct adapters in the batch (Punica/S-LoRA kernels make the latter nearly
free), so it understates the cost of very long contexts.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace

from scheduler.exceptions import SchedulerError
from scheduler.exceptions import UnknownProfileError

__all__ = ["PROFILE_NAMES", "CostProfile", "cost_profile"]


@dataclass(frozen=True, slots=True)
class CostProfile:
    """Every constant of the simulator's cost model; see the module docstring."""

    name: str
    description: str
    bytes_per_rank: int
    default_rank: int
    s3_latency_s: float
    s3_bytes_per_s: float
    disk_latency_s: float
    disk_bytes_per_s: float
    h2d_fixed_s: float
    h2d_bytes_per_s: float
    step_base_s: float
    step_per_seq_s: float
    prefill_per_token_s: float
    max_batch: int

    def __post_init__(self) -> None:
        rates = (self.s3_bytes_per_s, self.disk_bytes_per_s, self.h2d_bytes_per_s)
        fixed = (self.s3_latency_s, self.disk_latency_s, self.h2d_fixed_s, self.step_per_seq_s)
        if (
            min(rates) <= 0
            or min(fixed) < 0
            or self.prefill_per_token_s < 0
            or self.step_base_s <= 0
            or self.max_batch < 1
            or self.bytes_per_rank < 1
            or self.default_rank < 1
        ):
            raise SchedulerError(
                f"cost profile {self.name!r} is invalid: rates, step_base_s, max_batch, "
                "bytes_per_rank and default_rank must be positive and latencies >= 0"
            )

    def adapter_bytes(self, rank: int) -> int:
        """Size of an adapter of ``rank`` (0 means the profile's default rank)."""
        return (rank or self.default_rank) * self.bytes_per_rank

    def s3_seconds(self, size_bytes: int) -> float:
        return self.s3_latency_s + size_bytes / self.s3_bytes_per_s

    def disk_seconds(self, size_bytes: int) -> float:
        return self.disk_latency_s + size_bytes / self.disk_bytes_per_s

    def h2d_seconds(self, size_bytes: int) -> float:
        return self.h2d_fixed_s + size_bytes / self.h2d_bytes_per_s

    def replica_capacity_rps(self, prompt_mean: float, output_mean: float) -> float:
        """Requests/s one replica completes with its batch full (``max_batch`` running).

        Each second is spent on decode steps of ``max_batch`` sequences, each emitting
        one token per sequence, and on prefilling the prompts: with ``r`` requests/s,
        ``r * output_mean / max_batch`` steps of ``step_seconds(max_batch)`` plus
        ``r * prompt_mean * prefill_per_token_s`` make one second. The model is linear,
        so only the means matter. Queues grow without bound at or above this rate; a
        target load is a fraction of it.
        """
        per_request = (
            output_mean * self.step_seconds(self.max_batch) / self.max_batch
            + prompt_mean * self.prefill_per_token_s
        )
        return 1.0 / per_request

    def pooled(self, replicas: int) -> CostProfile:
        """One replica that stands for ``replicas`` of these sharing every request evenly.

        It batches ``replicas`` times as many sequences, and its per-sequence and
        per-prompt-token step costs, disk and host-to-GPU fixed costs and transfer time
        per byte are divided by ``replicas``: a step over ``b`` sequences lasts as long as
        one real replica's step over ``b / replicas``, and its link, disk and copy engine
        carry ``replicas`` times the bytes. Run with ``replicas`` times the GPU slots it
        is the *pooled replica*: the same pins, batching and eviction as ``replicas``
        replicas, in one cache that no placement partitions.

        Failure mode: one FIFO transfer queue stands for several parallel ones, so a
        burst of loads completes in the same total time but in a different order.

        Raises:
            SchedulerError: ``replicas`` is not positive.
        """
        if replicas < 1:
            raise SchedulerError(f"pooled replicas={replicas!r} must be >= 1")
        return replace(
            self,
            name=f"{self.name}-pooled-{replicas}",
            max_batch=self.max_batch * replicas,
            step_per_seq_s=self.step_per_seq_s / replicas,
            prefill_per_token_s=self.prefill_per_token_s / replicas,
            s3_bytes_per_s=self.s3_bytes_per_s * replicas,
            disk_latency_s=self.disk_latency_s / replicas,
            disk_bytes_per_s=self.disk_bytes_per_s * replicas,
            h2d_fixed_s=self.h2d_fixed_s / replicas,
            h2d_bytes_per_s=self.h2d_bytes_per_s * replicas,
        )

    def step_seconds(self, batch: int, prefill_tokens: int = 0) -> float:
        return (
            self.step_base_s
            + self.step_per_seq_s * batch
            + self.prefill_per_token_s * (prefill_tokens)
        )


# Llama-2-7B / Llama-3-8B shaped LoRA on q,k,v,o of 32 layers, hidden 4096, fp16:
# 4 modules * 32 layers * r * (4096 + 4096) * 2 bytes = 2 MiB per unit of rank, so a
# rank-16 adapter is 32 MiB (S-LoRA, Sheng et al. 2023, serves ranks 8-64 of this shape).
_LLAMA_7B_BYTES_PER_RANK = 4 * 32 * (4096 + 4096) * 2

A100_7B = CostProfile(
    name="a100-7b",
    description=(
        "One A100-80GB running a 7B-8B base model in bf16 with vLLM-style continuous "
        "batching and Punica/S-LoRA multi-adapter kernels; adapters on q,k,v,o."
    ),
    bytes_per_rank=_LLAMA_7B_BYTES_PER_RANK,
    default_rank=16,
    # AWS S3 performance guidelines: small GETs have a median first-byte latency "in the
    # tens of milliseconds" (whitepaper "Optimizing Amazon S3 performance", timeouts and
    # retries); one connection carries 85-90 MB/s ("make one concurrent request for each
    # 85-90 MB/s"), and boto3's transfer manager uses 10 concurrent ranged GETs
    # (s3transfer max_concurrency=10), so about 850 MB/s per replica.
    s3_latency_s=0.050,
    s3_bytes_per_s=850e6,
    # A datacentre NVMe SSD reads 2-3 GB/s sequentially; 2 GB/s plus 1 ms open/parse
    # (safetensors maps the file; the header parse is sub-millisecond).
    disk_latency_s=0.001,
    disk_bytes_per_s=2.0e9,
    # PCIe 4.0 x16 moves about 25 GB/s from pinned host memory (32 GB/s raw); 20 GB/s
    # from pageable tensors. The fixed part covers one copy per LoRA tensor (256 tensors
    # for q,k,v,o x 32 layers x A,B): LoRAX measured ~20 ms per layer when each layer was
    # moved separately (predibase/lorax#433) and PEFT ~25 ms to add an adapter
    # (huggingface/peft#981); vLLM's slot copies are batched, so 10 ms is used.
    h2d_fixed_s=0.010,
    h2d_bytes_per_s=20e9,
    # Decode step: vLLM on one A100 runs Llama-3.1-8B at ~75 tokens/s for a single
    # request (13.3 ms/step; johnmusgrave.com "vLLM throughput-latency sweep on NVIDIA
    # A100"), and Punica adds ~2 ms per token for the LoRA kernels (Chen et al., MLSys
    # 2024, abstract): 15 ms base. An H100 sweep of the same model (InferenceBench
    # concurrency-sweep recipe: TPOT 6.5 ms at 1 and 10.9 ms at 16 concurrent) gives
    # ~0.3 ms per extra sequence; the A100 has about half the H100's throughput (Lambda
    # vLLM benchmark), so 0.5 ms per sequence.
    step_base_s=0.015,
    step_per_seq_s=0.0005,
    # Prefill is compute bound: ~2 * 8e9 FLOPs per token at ~50% of the A100's 312 TFLOPS
    # bf16 peak is 0.1 ms per prompt token.
    prefill_per_token_s=0.0001,
    # vLLM's default max_num_seqs is 256; KV memory for 1-2k-token contexts on 80 GB
    # holds ~64 sequences of a 7B model comfortably.
    max_batch=64,
)

# Measured through our engine on the development machine (2 shared CPU cores, load
# average 6-10 from other work, torch 1 thread) on 2026-11-30 14:50 UTC by
# `python -m benchmarks.calibrate_cpu_profile --repeats 10`: the built-in `tiny` base
# model (services.engine.load_base_model("tiny"): hidden 64, 2 layers, 4 query / 2 KV
# heads, fp32) in MultiLoraModel, and real PEFT adapters of rank 8/16/32/64 on
# q_proj,k_proj,v_proj,o_proj (28-229 KB). Each figure is the fastest of 10 rounds of a
# median; the script's docstring says what each one times. Nine shorter runs earlier
# that day (3-5 rounds) spread widely with the machine's load: step base 1.8-2.8 ms (one
# 5.0 ms outlier), 69-138 us per sequence, 7-22 us per prompt token, blob fetch fixed
# cost 0.6-5.4 ms. These constants give this machine's order of magnitude, not more.
CPU_TINY = CostProfile(
    name="cpu",
    description=(
        "The embedded deployment on this machine: the built-in tiny base model in our "
        "multi-LoRA engine on CPU, blobs in a file:// store; constants measured by "
        "benchmarks/calibrate_cpu_profile.py."
    ),
    # LoRA on q (64->64), k (64->32), v (64->32), o (64->64) in 2 layers, fp32:
    # 2 * (128 + 96 + 96 + 128) * 4 = 3,584 bytes per rank, which is what HostAdapter
    # measured (size_bytes / rank) at every rank.
    bytes_per_rank=2 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64)) * 4,
    default_rank=8,
    # S3 stand-in: a cold DiskCache.ensure of the adapter's two files from the embedded
    # file:// blob store (copy, sha256 check, rename): 0.65-0.99 ms from rank 8 to 64,
    # least squares 0.66 ms + 654 MB/s.
    s3_latency_s=0.00066,
    s3_bytes_per_s=6.5e8,
    # Disk -> host, HostAdapter.from_dir (safetensors read, PEFT names mapped, scaling
    # folded into B): 1.10-1.36 ms, least squares 1.22 ms + 2.3 GB/s; the fixed cost
    # dominates at these sizes, so the rate is only roughly resolved.
    disk_latency_s=0.00122,
    disk_bytes_per_s=2.3e9,
    # Host -> slot, MultiLoraModel.load_slot (on CPU the "device" is host memory):
    # 0.12-0.22 ms with no upward trend in size, because load_slot writes every wrapped
    # module's max_rank-padded slot whatever the adapter's rank. The fit's intercept is
    # the fixed cost; 1e12 B/s stands for "no size term" (a rate must be positive).
    h2d_fixed_s=0.000169,
    h2d_bytes_per_s=1e12,
    # One decode step, every row on a distinct adapter, ~25-token contexts: 1.97 ms at
    # batch 1 to 5.16 ms at 32; least squares 1.93 ms + 99 us per sequence.
    step_base_s=0.00193,
    step_per_seq_s=0.000099,
    # Prefill of one prompt of 16..256 tokens through the same forward (4.1-6.7 ms): the
    # least-squares slope, 10.6 us per prompt token.
    prefill_per_token_s=0.0000106,
    # The largest batch measured, and the engine benchmark's batch.
    max_batch=32,
)

# The same engine end to end: ``loramux up``-style, 4 model replicas, the ingress and the
# proxy sharing this machine's 2 cores, each request crossing HTTP, Redis and Ray. The
# load tiers are as measured; a batch step costs 25x the engine-alone figure: the factor
# that gives the simulator the measured median latency when it replays
# benchmarks/bench_serve_routing.py's runs (fitted per run: 23.4-28.7 over 12 runs of
# 1,000 requests at concurrency 16, both routers, three workloads; see
# docs/scheduler-results.md).
_END_TO_END_STEP_FACTOR = 25.0
CPU_SERVE = replace(
    CPU_TINY,
    name="cpu-serve",
    description=(
        "The tiny model served end to end on this machine (4 replicas, ingress and proxy "
        "on 2 cores): the cpu profile with batch steps 25x as long, fitted by "
        "benchmarks/bench_serve_routing.py to the measured latency."
    ),
    step_base_s=CPU_TINY.step_base_s * _END_TO_END_STEP_FACTOR,
    step_per_seq_s=CPU_TINY.step_per_seq_s * _END_TO_END_STEP_FACTOR,
    prefill_per_token_s=CPU_TINY.prefill_per_token_s * _END_TO_END_STEP_FACTOR,
)

_PROFILES: dict[str, CostProfile] = {p.name: p for p in (A100_7B, CPU_TINY, CPU_SERVE)}
PROFILE_NAMES: tuple[str, ...] = tuple(sorted(_PROFILES))


def cost_profile(name: str) -> CostProfile:
    """The profile registered as ``name``.

    Raises:
        UnknownProfileError: no such profile; the message lists the known names.
    """
    try:
        return _PROFILES[name]
    except KeyError:
        raise UnknownProfileError(
            f"unknown cost profile {name!r}; choose one of: {', '.join(PROFILE_NAMES)}"
        ) from None

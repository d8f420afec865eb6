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

from scheduler.exceptions import SchedulerError, UnknownProfileError

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

# Measured on the development machine (2 shared CPU cores, torch 1 thread) on
# 2026-11-30 by benchmarks/calibrate_cpu_profile.py with tests.factories.tiny_llama
# (hidden 64, 2 layers, fp32) and real PEFT adapters of rank 8/32/128 on q,v (15/58/230
# KB). Medians; that script's docstring says what each figure is.
CPU_TINY = CostProfile(
    name="cpu",
    description=(
        "The embedded deployment on this machine: the tiny Llama on CPU, blobs in a "
        "file:// store; constants measured by benchmarks/calibrate_cpu_profile.py."
    ),
    # tiny Llama, q (64->64) and v (64->32) in 2 layers, fp32: 2 * (64+64 + 64+32) * 4
    # bytes per rank (measured files: 1,792 bytes per rank plus a ~1 KB header).
    bytes_per_rank=2 * (64 + 64 + 64 + 32) * 4,
    default_rank=8,
    # The embedded blob store's read plus sha256 verification: 26 us + 1.40 GB/s.
    s3_latency_s=0.000026,
    s3_bytes_per_s=1.40e9,
    # safetensors load_file took 0.50-0.55 ms at every size (fixed cost dominates); the
    # byte rate is not resolvable at these sizes, so the file-read rate above is used.
    disk_latency_s=0.00055,
    disk_bytes_per_s=1.40e9,
    # Cloning the adapter's tensors (the CPU stand-in for a device copy): 28 us + 20.8 GB/s.
    h2d_fixed_s=0.000028,
    h2d_bytes_per_s=20.8e9,
    # One decode step over a 32-token cache took 7.2-8.0 ms at batch 1..32 with no trend
    # (per-step overhead dominates a model this small), so the per-sequence cost is 0.
    step_base_s=0.0076,
    step_per_seq_s=0.0,
    # Prefill of 32..224 tokens in one forward: 34.5 us per token over the step cost.
    prefill_per_token_s=0.0000345,
    max_batch=32,
)

_PROFILES: dict[str, CostProfile] = {p.name: p for p in (A100_7B, CPU_TINY)}
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

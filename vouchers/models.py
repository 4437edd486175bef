"""Frozen records that cross the store boundary. Amounts are integers in the smallest unit."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from vouchers.units import Kind


@dataclass(frozen=True)
class Startup:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    id: str
    startup_id: str
    name: str
    key_hash: str  # sha256 hex of the secret; the secret itself is never stored
    prefix: str  # the first characters of the secret, for display
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Voucher:
    """A grant of credit. `spent` and `held` are what is debited from it and reserved on it now.

    Whether it is in force, where it comes in burn order and what it has free: `vouchers.rules`.
    """

    id: str
    startup_id: str
    kind: Kind
    amount: int
    effective_at: float
    expires_at: float | None
    priority: int
    note: str
    created_at: float
    voided_at: float | None = None
    spent: int = 0
    held: int = 0


class HoldStatus(StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


@dataclass(frozen=True)
class Hold:
    """A reservation. `allocations` says how much of `amount` sits on which voucher."""

    id: str
    startup_id: str
    kind: Kind
    amount: int
    allocations: tuple[tuple[str, int], ...]
    idempotency_key: str
    created_at: float
    expires_at: float
    status: HoldStatus
    settled: int = 0  # debited through this hold so far (partial settlements included)
    # True when `reserve` found the hold of an earlier call with the same key instead of creating one.
    # Not stored: it says how this copy was obtained.
    replayed: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class ChargeRef:
    """What a debit is for: a request or a job, and the usage behind it."""

    reference: str
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_type: str | None = None


@dataclass(frozen=True)
class JournalLine:
    """An append-only debit. `amount` came off vouchers (see `breakdown`); `overage` found none."""

    seq: int
    at: float
    startup_id: str
    kind: Kind
    amount: int
    overage: int
    breakdown: tuple[tuple[str, int], ...]
    idempotency_key: str
    hold_id: str | None
    ref: ChargeRef


@dataclass(frozen=True)
class KindBalance:
    granted: int = 0
    spent: int = 0
    held: int = 0
    remaining: int = 0


@dataclass(frozen=True)
class Balance:
    """Over the vouchers in force: granted = spent + held + remaining, per kind."""

    startup_id: str
    model: KindBalance
    compute: KindBalance
    vouchers: tuple[Voucher, ...] = field(default_factory=tuple)

    def of(self, kind: Kind) -> KindBalance:
        return self.model if kind is Kind.MODEL else self.compute


@dataclass(frozen=True)
class UsageTotal:
    """Running totals for metrics: per startup, kind and model (model) or gpu type (compute)."""

    startup_id: str
    kind: Kind
    label: str
    amount: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Price:
    model: str
    input_per_1m: int  # micro-credits per million prompt tokens
    output_per_1m: int  # micro-credits per million completion tokens


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_gpus: int | None = None  # GPUs a startup's jobs may hold at once
    max_queued_jobs: int | None = None  # jobs a startup may have waiting


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit_requests: int | None
    remaining_requests: int | None
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_s: float  # seconds until the current window ends
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class WorkerRecord:
    """A serving replica the gateway may route to. owner None means shared by every startup."""

    id: str
    model: str
    url: str
    engine: str
    owner: str | None = None
    capacity: int = 8
    node: str | None = None
    context_length: int | None = None
    tokenize_path: str | None = None  # e.g. "/tokenize" (vLLM) or "/extras/tokenize" (llama.cpp)
    health_path: str = "/health"  # GET answers 200 while the replica can serve
    embeddings: bool = False  # the replica serves POST /v1/embeddings
    heartbeat_at: float = 0.0

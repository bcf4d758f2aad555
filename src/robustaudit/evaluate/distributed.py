"""Multi-process audits: ``torchrun --nproc-per-node=K -m robustaudit audit ...`` (or Slurm's ``srun``).

Layout (DESIGN.md, docs/scaling.md):

- each process (rank) audits the sample ids ``ids[rank::world_size]``: every sample exactly once, no
  padding, shards differing by at most one sample;
- each rank writes its own store, ``OUT/ranks/rank-K.sqlite`` (same tables as the single-process
  ``OUT/results.sqlite``, which a multi-process run never touches), so a rank that dies loses at most
  its batch in flight, and re-running the same command with ``--resume`` continues every rank from its
  store. The stores' fingerprint holds the world size: resuming with another one is refused (a rank's
  batches are keyed by its shard's exact ids);
- after its shard, each rank hands its :class:`ResultMatrix` to every other (``all_gather_object``), and
  :func:`merge` builds the single-process matrix from them: every random draw is keyed by (seed, sample
  id, attack, eps, restart), so each sample's outcome does not depend on which rank attacked it;
- rank 0 alone runs what needs the whole data set after the matrix (sanity checks, detectors, model
  cost) and writes ``results.json`` and the reports, then sends the finished result to every rank, so
  every rank returns the same result and the CLI the same exit code;
- a failure on any rank is raised on every rank at the next collective (:func:`agree`), with the
  lowest failing rank's message, so no rank waits for one that gave up.

Which process is which comes from the launcher's environment: ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
(torchrun and any ``env://`` launcher) or, inside an ``srun`` step, ``SLURM_PROCID`` / ``SLURM_NTASKS`` /
``SLURM_LOCALID`` with ``MASTER_ADDR`` / ``MASTER_PORT`` set by the job script. ``ROBUSTAUDIT_DISTRIBUTED=0``
turns detection off (a plain audit inside a larger job). The backend is gloo on CPU and nccl on CUDA,
where rank K uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from robustaudit.core.errors import UserError
from robustaudit.evaluate.aggregate import Outcomes
from robustaudit.evaluate.result import Example, ResultMatrix
from robustaudit.evaluate.store import STORE_FILE

T = TypeVar("T")

#: Folder of the per-rank stores, under ``--out``.
RANKS_DIR = "ranks"
#: Seconds a rank waits at a collective for the others (rank 0's checks and reports included).
DEFAULT_TIMEOUT_S = 6 * 3600
_TIMEOUT_ENV = "ROBUSTAUDIT_DIST_TIMEOUT"


@dataclass(frozen=True)
class Launch:
    """Who this process is among the processes of one audit."""

    rank: int
    world_size: int
    local_rank: int
    #: ``torchrun`` (any launcher setting RANK/WORLD_SIZE) or ``slurm``
    launcher: str


def detect(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, from the launcher's environment; ``None`` for a plain
    single-process run (no launcher, a world of one, or ``ROBUSTAUDIT_DISTRIBUTED=0``).

    Raises:
        UserError: malformed variables, or an srun step of several tasks without MASTER_ADDR/PORT.
    """
    env = os.environ if environ is None else environ
    if env.get("ROBUSTAUDIT_DISTRIBUTED", "").strip() == "0":
        return None
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        # only inside an srun step: the batch script itself also sees SLURM_NTASKS, but it is one process
        rank, world, local = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_LOCALID")
        launcher = "slurm"
        if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise UserError("srun started this audit as one of several tasks, but MASTER_ADDR and MASTER_PORT are "
                            "not set: export them in the job script (see docs/scaling.md), or set "
                            "ROBUSTAUDIT_DISTRIBUTED=0 for independent audits")
    else:
        return None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"bad launch environment: rank {rank} of world size {world} (local rank {local})")
    return Launch(rank, world, local, launcher) if world > 1 else None


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise UserError(f"environment variable {key}={env[key]!r} is not an integer") from None


def rank_of(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank (0 without a launcher, or when the environment is malformed: the CLI uses it
    only to decide who prints)."""
    try:
        launch = detect(environ)
    except UserError:
        return 0
    return launch.rank if launch is not None else 0


@dataclass
class DistContext:
    """An initialised process group of one audit: the launch, the device this rank uses, the backend."""

    launch: Launch
    device: torch.device
    backend: str
    #: whether :func:`setup` created the process group (and :func:`teardown` destroys it)
    owned: bool = True
    #: rank 0 owes the other ranks its outcome (they wait in :func:`receive_outcome`)
    awaiting: bool = False

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0


def device_for(launch: Launch, spec: str) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto`` (with CUDA) and ``cuda``; ``cpu`` for
    ``cpu``. A fixed ``cuda:N`` or ``mps`` is refused: every rank would pick the same device."""
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise UserError(f"local rank {launch.local_rank} has no GPU: this node has {count}; start at most "
                            f"{count} processes per node")
        return torch.device("cuda", launch.local_rank)
    raise UserError(f"--device {spec} cannot be shared by {launch.world_size} processes: give --device cuda "
                    "(each process takes cuda:LOCAL_RANK), auto or cpu")


def setup(launch: Launch, device_spec: str) -> DistContext:
    """Join the process group (gloo on CPU, nccl on CUDA) and pick this rank's device.

    Joins an existing default group of the same size instead of creating one (a user's script that
    initialised torch.distributed itself).
    """
    import torch.distributed as dist

    device = device_for(launch, device_spec)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        if dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
            raise UserError(f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                            f"{dist.get_world_size()}, but the environment says {launch.rank} of {launch.world_size}")
        return DistContext(launch, device, dist.get_backend(), owned=False)
    timeout = _dt.timedelta(seconds=float(os.environ.get(_TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    try:
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"rank {launch.rank} could not join the process group at {where} ({backend}): {first}") from None
    return DistContext(launch, device, backend)


def teardown(ctx: DistContext | None) -> None:
    """Leave the process group :func:`setup` created (a group the caller made stays)."""
    import torch.distributed as dist

    if ctx is not None and ctx.owned and dist.is_initialized():
        dist.destroy_process_group()


def shard(ids: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's sample ids: every ``world_size``-th from position ``rank`` (disjoint, covering, no
    padding; sizes differ by at most one). Strided, not blocks, so each rank gets a slice of every
    region of the data (a sorted data set would otherwise give one rank all of one class)."""
    return list(ids[rank::world_size])


def rank_store_path(out: str | Path, rank: int) -> Path:
    """Where rank ``rank`` keeps its store: ``OUT/ranks/rank-K.sqlite``."""
    return Path(out) / RANKS_DIR / f"rank-{rank}.sqlite"


def check_layout(out: str | Path, world_size: int, *, resume: bool) -> None:
    """Refuse, with one line, to resume a run of one layout with the other: a single-process store
    (``OUT/results.sqlite``) under several processes, or rank stores without a launcher."""
    out = Path(out)
    ranks = sorted((out / RANKS_DIR).glob("rank-*.sqlite")) if (out / RANKS_DIR).is_dir() else []
    single = (out / STORE_FILE).is_file()
    if not resume:
        return
    if world_size == 1 and ranks and not single:
        raise UserError(f"--resume: {out} holds a run of {len(ranks)} processes ({RANKS_DIR}/rank-*.sqlite); resume "
                        f"it with the same launch (e.g. torchrun --nproc-per-node={len(ranks)} -m robustaudit -- audit "
                        "... --resume)")
    if world_size > 1 and single and not ranks:
        raise UserError(f"--resume: {out} holds a single-process run ({STORE_FILE}); resume it without torchrun/srun, "
                        "or start over with --overwrite")


def remove_stale_ranks(out: str | Path, world_size: int) -> None:
    """A fresh run of ``world_size`` processes deletes rank stores of a larger earlier run (rank 0 only)."""
    folder = Path(out) / RANKS_DIR
    if not folder.is_dir():
        return
    for path in folder.glob("rank-*.sqlite*"):
        stem = path.name.split(".")[0]
        try:
            k = int(stem.removeprefix("rank-"))
        except ValueError:
            continue
        if k >= world_size:
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- collectives
class RemoteFailure(RuntimeError):
    """Another rank failed with an internal error; this rank stops with it."""


def agree(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; when it failed on any rank, raise on every rank the failure of the
    lowest failing rank (a UserError stays a UserError, Ctrl-C / SIGTERM a KeyboardInterrupt), so every
    rank stops with the same exit code and none waits at a later collective for one that gave up."""
    import torch.distributed as dist

    local: BaseException | None = None
    status: tuple[str, str] | None = None
    try:
        value = fn()
    except UserError as exc:
        local, status = exc, ("user", str(exc))
    except KeyboardInterrupt as exc:
        local, status = exc, ("interrupt", "")
    except Exception as exc:  # noqa: BLE001 - told to every rank below, then re-raised here
        local, status = exc, ("internal", f"{type(exc).__name__}: {exc}")
    statuses: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(statuses, status)
    failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
    if not failed:
        return value
    rank, (kind, message) = failed[0]
    if rank == ctx.rank and local is not None:
        raise local
    if kind == "user":
        raise UserError(message if rank == 0 else f"rank {rank}: {message}")
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise RemoteFailure(f"rank {rank} failed: {message}")


def send_outcome(ctx: DistContext, result: Any = None, failure: BaseException | None = None) -> None:
    """Rank 0: hand the finished ``result`` (or the ``failure`` that ended the audit) to every rank, which
    waits for it in :func:`receive_outcome`."""
    import torch.distributed as dist

    if failure is None:
        box: list[Any] = [("ok", result)]
    elif isinstance(failure, UserError):
        box = [("user", str(failure))]
    elif isinstance(failure, KeyboardInterrupt):
        box = [("interrupt", "")]
    else:
        box = [("internal", f"{type(failure).__name__}: {failure}")]
    dist.broadcast_object_list(box, src=0)


def receive_outcome(ctx: DistContext) -> Any:
    """Ranks other than 0: rank 0's result, or its failure raised here (same exit code on every rank)."""
    import torch.distributed as dist

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    kind, payload = box[0]
    if kind == "ok":
        return payload
    if kind == "user":
        raise UserError(payload)
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise RemoteFailure(f"rank 0 failed: {payload}")


def gather(ctx: DistContext, value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


# --------------------------------------------------------------------------------- merge
def merge(parts: Sequence[ResultMatrix], ids: Sequence[int], *, examples_per_cell: int = 2) -> ResultMatrix:
    """The matrix of the whole audit from the matrices of disjoint shards of ``ids``.

    The shards' per-sample outcomes are concatenated and aggregated (:mod:`robustaudit.evaluate.aggregate`),
    as one process aggregates its own: counts, intervals and the worst case come from the same function.
    Minimal norms are united (in the order of ``ids``); examples: per cell the first ``examples_per_cell``
    in the order of ``ids``, as a single process picks them (each shard's picks hold its own first ones). A
    column a rank skipped (a model without input gradients) is dropped from every rank. Resume and skip
    provenance is summed / united.
    """
    if not parts:
        raise ValueError("nothing to merge")
    if any(p.outcomes is None for p in parts):
        raise ValueError("merge needs each shard's per-sample outcomes (results of run())")
    position = {int(i): k for k, i in enumerate(ids)}
    skipped = _unique_dicts(s for p in parts for s in p.provenance.get("skipped", []))
    dropped = {(s["model"], s["attack"]) for s in skipped}
    outcomes = Outcomes.concat([p.outcomes for p in parts if p.outcomes is not None]).without(dropped)
    minimal: dict[tuple[str, str], dict[int, float]] = {}
    for p in parts:
        for key, norms in p.minimal_norms.items():
            if key[:2] not in dropped:
                minimal.setdefault(key, {}).update(norms)
    minimal = {k: dict(sorted(v.items(), key=lambda kv: position.get(kv[0], kv[0]))) for k, v in minimal.items()}
    result = ResultMatrix.from_outcomes(outcomes, minimal_norms=minimal)
    keys = list(zip(result.records["model"], result.records["attack"], result.records["eps"]))
    result.examples = _merge_examples([p.examples for p in parts], keys, position, examples_per_cell, dropped)
    resumes = [p.provenance["resume"] for p in parts if "resume" in p.provenance]
    if resumes:
        result.provenance["resume"] = {k: sum(r.get(k, 0) for r in resumes) for k in resumes[0]}
    if skipped:
        result.provenance["skipped"] = skipped
    halvings = [dict(h, rank=k) for k, p in enumerate(parts) for h in p.provenance.get("oom_halvings", [])]
    if halvings:
        result.provenance["oom_halvings"] = halvings
    if "fits" in parts[0].provenance:  # universal attacks: every rank fitted the same (keyed) artefact
        result.provenance["fits"] = parts[0].provenance["fits"]
    return result


def _merge_examples(per_rank: Sequence[Sequence[Example]], keys: Sequence[tuple[str, str, float]],
                    position: Mapping[int, int], limit: int, dropped: set[tuple[str, str]]) -> list[Example]:
    """Examples in the single-process order: by model and attack (the records' order), then eps, then
    sample position; at most ``limit`` per model × attack × eps."""
    order: dict[tuple[str, str], int] = {}
    for m, a, _ in keys:
        order.setdefault((m, a), len(order))
    pool = [e for examples in per_rank for e in examples if (e.model, e.attack) not in dropped]
    pool.sort(key=lambda e: (order.get((e.model, e.attack), len(order)), e.eps,
                             position.get(e.sample_id, len(position)) if e.sample_id is not None else len(position)))
    out: list[Example] = []
    taken: dict[tuple[str, str, float], int] = {}
    for e in pool:
        cell = (e.model, e.attack, e.eps)
        if taken.get(cell, 0) < limit:
            taken[cell] = taken.get(cell, 0) + 1
            out.append(e)
    return out


def _unique_dicts(items: Any) -> list[dict[str, Any]]:
    seen, out = set(), []
    for d in items:
        key = tuple(sorted((k, str(v)) for k, v in d.items()))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


__all__ = ["RANKS_DIR", "DistContext", "Launch", "agree", "check_layout", "detect", "device_for", "gather", "merge",
           "rank_of", "rank_store_path", "receive_outcome", "remove_stale_ranks", "send_outcome", "setup", "shard",
           "teardown"]

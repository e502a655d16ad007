"""Data-parallel training: the process group, the few collectives the loop needs, the launcher.

Processes are started by PyTorch's own launcher, ``torchrun`` (``torch.distributed.run``), either
by ``mnistkit run --nproc N`` (:func:`launch`, standalone rendezvous on a free port) or by the user
(``torchrun ... -m mnistkit run RECIPE``, several machines). Each process runs the ordinary
``mnistkit run``; :func:`setup` recognizes torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group (gloo on CPU, nccl on
CUDA with one GPU per local rank). Without that environment (or with ``WORLD_SIZE=1``) it returns
:data:`SINGLE`, the trivial context, and the run takes exactly the single-process code path.

The training loop (train.py) and the runner call only :class:`Context`: rank, world size,
``is_main``, sums all-reduced, barrier, broadcast of one object (the run-directory name), and
:class:`GradSync`, which averages gradients over the *global* batch. Semantics: docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistkit.data.types import Split
from mnistkit.errors import PeerStopped, RunError, set_hint
from mnistkit.training import nodes as nodes_mod

# Collectives give up after this long (seconds; $MNISTKIT_DIST_TIMEOUT overrides). A process that
# dies is noticed at once (its sockets close, torchrun stops the others); this bounds the rarer
# case of a process that hangs without dying. It must cover the longest time one rank works alone
# while the others wait: rank 0 preparing the data (a download, the audio feature cache) before
# the others load it.
TIMEOUT_ENV = "MNISTKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
# Processes set up by hand (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, no torchrun): how long to
# keep trying to reach rank 0's store before saying the endpoint did not answer. Under torchrun
# the agent has done the rendezvous already and this does not apply.
CONNECT_TIMEOUT_S = 60


@dataclass
class Context:
    """Where this process stands in the job. ``SINGLE`` (one process) makes every call free."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    hosts: list[str] = field(default_factory=list)
    # Per rank: {"host": name, "address": where the others reach it} (nodes.this_node).
    nodes: list[dict[str, str]] = field(default_factory=list)
    interface: dict[str, str | None] = field(default_factory=dict)  # gloo's, and who chose it
    heartbeat: nodes_mod.Heartbeat | None = None  # several machines: watches for a lost node

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # -- collectives (no-ops for one process) ---------------------------------------------------
    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over all ranks, in place (and returned)."""
        if self.distributed:
            torch.distributed.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects: a path, a checkpoint dict)."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([int(flag)])).item())

    def broadcast_module(self, model: nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters and buffers (or only its buffers, e.g. BatchNorm running
        statistics) into every rank's copy of ``model``."""
        if not self.distributed:
            return
        tensors = [*model.buffers()] if buffers_only else [*model.parameters(), *model.buffers()]
        with torch.no_grad():
            for t in tensors:
                torch.distributed.broadcast(t.data, src=0)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (downloads, feature caches), the others once it is done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # -- sharding ---------------------------------------------------------------------------------
    def shard_bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part of ``n`` items: sizes differ by at most one, the first
        ``n % world_size`` ranks take the larger parts (``torch.tensor_split``'s rule)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def shard_split(self, split: Split) -> Split:
        """This rank's part of an evaluation split: every sample on exactly one rank, no padding."""
        if not self.distributed:
            return split
        start, stop = self.shard_bounds(len(split.y))
        return split.part(slice(start, stop))

    def check_shards(self, n_train: int, batch_size: int, drop_last: bool) -> None:
        """Refuse a batch size that would leave a rank without samples in some step."""
        if not self.distributed:
            return
        smallest = batch_size
        rest = n_train % batch_size
        if rest and not drop_last:
            smallest = rest
        if n_train >= batch_size and smallest >= self.world_size:
            return
        raise RunError(
            f"data.batch_size {batch_size} with {n_train:,} training samples gives a batch of "
            f"{min(smallest, n_train)} sample(s), fewer than the {self.world_size} processes: some "
            "process would have nothing to train on in that step. "
            "Use a batch size of at least the number of processes"
            + (f", or {set_hint('data.drop_last', 'true')} (the last partial batch goes)" if rest else "")
        )

    def close(self, finished: bool = False) -> None:
        """Leave the process group. ``finished``: every rank got here on the normal path, so
        they first meet at a barrier (on an error path another rank may never arrive).

        Why the barrier: gloo's worker thread frees a collective's tensors after the caller's
        ``wait()`` has returned, and freeing a tensor made in Python needs the GIL. A rank that
        exits right after its last collective (rank 1 after the final checkpoint's gather) can
        reach interpreter shutdown first; the worker thread then dies taking the GIL, and the
        process aborts ("terminate called without an active exception", SIGABRT) although the
        run itself succeeded. The barrier releases the GIL while it waits, and it can only be
        queued once the worker thread has dropped the previous collective. destroy_process_group
        alone does not stop the thread: importing torch._inductor (the optimizers do) keeps
        references to the default group, so its threads live until the process exits.
        """
        if self.distributed and torch.distributed.is_initialized():
            if finished:
                torch.distributed.barrier()
            if self.heartbeat is not None:
                self.heartbeat.stop()
            torch.distributed.destroy_process_group()
        elif self.heartbeat is not None:
            self.heartbeat.stop()

    def peer_stopped(self, exc: BaseException) -> PeerStopped | None:
        """``exc`` as this process stopping because another one died (None: something else)."""
        if not self.distributed or not isinstance(exc, RuntimeError):
            return None
        why = peer_failure(exc, self.lost_peer(exc))
        return PeerStopped(why) if why else None

    def lost_peer(self, exc: BaseException) -> str | None:
        """Which node a collective's failure lost, when gloo's message names its address
        (``Connection closed by peer [10.231.0.2]:4321``)."""
        if len({(n["host"], n["address"]) for n in self.nodes}) < 2:
            return None  # one machine: the ranks' own messages say which process failed
        found = re.search(r"\[([0-9a-fA-F.:]+)\]:\d+", str(exc))
        ranks = nodes_mod.ranks_at(self.nodes, found.group(1), self.rank) if found else []
        return nodes_mod.describe(self.nodes, ranks) if ranks else None


SINGLE = Context()


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError:
        raise RunError(f"${name}={value!r}: expected an integer (set by torchrun)") from None


def world_from_env() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) as torchrun sets them; (0, 1, 0, 1) alone."""
    world = _int_env("WORLD_SIZE", 1)
    return (
        _int_env("RANK", 0),
        world,
        _int_env("LOCAL_RANK", 0),
        _int_env("LOCAL_WORLD_SIZE", world),
    )


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes, or return ``SINGLE`` when there is none.

    Returns the context and the device this process trains on (``cuda:LOCAL_RANK`` on CUDA).
    """
    rank, world, local_rank, local_world = world_from_env()
    if world <= 1:
        return SINGLE, device
    if device.type == "cuda":
        if local_world > torch.cuda.device_count():
            raise RunError(
                f"{local_world} processes on this machine but {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (--nproc / --nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise RunError(f"distributed training supports CPU (gloo) and CUDA (nccl), not {device.type}")
    timeout = dt.timedelta(seconds=_int_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    interface: tuple[str | None, str] = (None, "")
    if backend == "gloo":  # several machines: gloo must listen where the others can reach it
        interface = nodes_mod.choose_interface(master, spans_machines=local_world < world)
    try:
        store = None
        if "TORCHELASTIC_RUN_ID" not in os.environ:  # no torchrun agent: rank 0 hosts the store
            host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _int_env("MASTER_PORT", 29500)
            if rank != 0:
                _wait_for_endpoint(host, port, rank)
            store = torch.distributed.TCPStore(
                host,
                port,
                world,
                is_master=rank == 0,
                timeout=dt.timedelta(seconds=CONNECT_TIMEOUT_S),
            )
        torch.distributed.init_process_group(
            backend, store=store, timeout=timeout, rank=rank, world_size=world
        )
    except (RuntimeError, ValueError, OSError) as exc:  # DistNetworkError/DistStoreError included
        raise RunError(_join_error(where, rank, exc)) from None
    ctx = Context(rank, world, local_rank, local_world, backend)
    ctx.nodes = ctx.gather_objects(nodes_mod.this_node(interface[0], master))
    ctx.hosts = sorted({n["host"] for n in ctx.nodes})
    ctx.interface = {"name": interface[0], "chosen_by": interface[1] or None}
    if len({(n["host"], n["address"]) for n in ctx.nodes}) > 1:  # a lost machine: see nodes.py
        port = _int_env("MASTER_PORT", 29500)
        ctx.heartbeat = nodes_mod.Heartbeat(rank, world, ctx.nodes, master, port)
        ctx.heartbeat.start()
    return ctx, device


def resume_world_note(run_dir: Path, ckpt: dict[str, Any] | None, ctx: Context) -> list[str]:
    """``--resume`` with another number of processes than the run had (a machine was lost, and
    the job goes on with the ones left): it continues, with a note on what stays the same."""
    saved = (ckpt or {}).get("world_size", 1)
    if ckpt is None or saved == ctx.world_size:
        return []
    batch = ((ckpt.get("recipe") or {}).get("data") or {}).get("batch_size")
    return [
        f"--resume {run_dir}: the number of processes changed from {saved} to {ctx.world_size}. "
        f"The same: the global batch (data.batch_size {batch}), the sample order, the optimizer "
        f"and learning-rate schedule; each batch is split over {ctx.world_size} process(es) now. "
        f"Not bit-for-bit what {saved} would give: sums in another order, a dropout stream per "
        f"process, BatchNorm statistics per process on CPU. Resume with {saved} process(es) to "
        "continue exactly"
    ]


def _wait_for_endpoint(host: str, port: int, rank: int) -> None:
    """Wait (up to CONNECT_TIMEOUT_S) until rank 0's store accepts connections; a clear error if
    it never does. (torch's own client retries as long, then prints C++ stack traces.)"""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError as exc:
            last = exc
            time.sleep(0.5)
    raise RunError(
        f"the rendezvous endpoint {host}:{port} did not answer within {CONNECT_TIMEOUT_S} s "
        f"({last}); check MASTER_ADDR / MASTER_PORT, that rank 0 was started, and that no "
        "firewall is in the way"
    )


def _join_error(where: str, rank: int, exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = text.lower()
    if "connectfullmesh" in low:  # the store answered, but the processes could not connect
        what = "the processes could not connect to each other (gloo)"
        fix = (
            "a host name that resolves to loopback (127.0.1.1 in /etc/hosts) makes gloo listen "
            f"there: set {nodes_mod.IFNAME_ENV}=INTERFACE on every machine; and check that no "
            "firewall blocks the ports between the machines"
        )
    elif "address already in use" in low or "eaddrinuse" in low:
        what = f"port {where.rpartition(':')[2]} is already in use on this machine"
        fix = "choose another port (--master-port / --rdzv-endpoint), or stop the job using it"
    elif "timed out" in low or "timeout" in low or "refused" in low or "unreachable" in low:
        what = f"the rendezvous endpoint {where} did not answer"
        fix = "check the host name and port, that rank 0 was started, and that no firewall is in the way"
    else:
        what = f"could not join the process group at {where}"
        fix = "check MASTER_ADDR / MASTER_PORT (or torchrun's --rdzv-endpoint)"
    return f"{what} ({text}); {fix}"


class GradSync:
    """Averages gradients over the global batch with one all-reduce per step.

    Each rank backpropagates its shard's mean loss times its shard size (``loss * n_r``); one
    all-reduce (sum) then carries every gradient plus four numbers: the shard's loss sum, its
    correct predictions, its size and whether it was asked to stop (Ctrl-C). Dividing the summed
    gradients by the global batch size ``n = sum(n_r)`` gives exactly the gradient of the mean
    loss over the global batch (what one process computes, up to floating-point rounding), and
    every rank gets the same global loss, accuracy count and stop decision, so all of them take
    the same branch afterwards (stop at the same step, raise on the same non-finite loss).
    Losses must be means over the batch (every built-in loss is).
    """

    def __init__(self, model: nn.Module, ctx: Context) -> None:
        self.ctx = ctx
        self.params = [p for p in model.parameters() if p.requires_grad]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise RunError(
                f"distributed training needs parameters of one dtype, got {sorted(map(str, dtypes))}"
            )
        self.numels = [p.numel() for p in self.params]
        self.dtype = next(iter(dtypes)) if dtypes else torch.float32

    def __call__(
        self, loss: torch.Tensor, correct: torch.Tensor, n: int, stop: bool
    ) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        """After ``(loss * n).backward()`` on this rank's ``n`` samples: average the gradients.

        Returns the global batch's mean loss and correct count (0-dim tensors), its size, and
        whether any rank asked to stop.
        """
        device = self.params[0].device if self.params else loss.device
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params]
        stats = torch.stack(
            [
                loss.detach().to(self.dtype) * n,
                correct.to(self.dtype),
                torch.tensor(float(n), dtype=self.dtype, device=device),
                torch.tensor(float(stop), dtype=self.dtype, device=device),
            ]
        )
        flat = torch.cat([*grads, stats])
        torch.distributed.all_reduce(flat)
        total = flat[-4:].tolist()  # one host read: the batch size is needed below anyway
        n_global = int(total[2])
        flat = flat[:-4].div_(n_global)
        for p, g in zip(self.params, flat.split(self.numels), strict=True):
            p.grad = g.view_as(p)
        loss_mean = torch.tensor(total[0] / n_global, dtype=torch.float64, device=loss.device)
        correct_sum = torch.tensor(round(total[1]), dtype=torch.int64, device=loss.device)
        return loss_mean, correct_sum, n_global, total[3] > 0


def maybe_sync_batchnorm(model: nn.Module, ctx: Context, device: torch.device) -> tuple[nn.Module, str]:
    """SyncBatchNorm where the backend has it (CUDA); otherwise BatchNorm keeps per-rank batch
    statistics (gloo on CPU: torch's SyncBatchNorm refuses CPU tensors). Returns the model and
    what was done, for env.json."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not ctx.distributed or not has_bn:
        return model, "none"
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), "sync"
    return model, "per-rank"


def rng_state() -> dict[str, Any]:
    """This process's global RNG streams (dropout), to be saved per rank."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ launching
def under_launcher() -> bool:
    """Whether this process was started by torchrun (or set up by hand as one of several)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or world_from_env()[1] > 1


def launch(nproc: int, worker_args: list[str]) -> int:
    """``mnistkit run ... --nproc N``: start N processes of ``python -m mnistkit WORKER_ARGS``
    through torchrun (``torch.distributed.run``) with a standalone rendezvous (a c10d store on a
    free port, so two jobs on one machine never collide). Returns the exit code for the CLI."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    from mnistkit.training.threads import core_share

    # One share of the cores per process (torchrun would otherwise set 1 and print a banner);
    # each rank sets torch's thread count from the same rule (LOCAL_WORLD_SIZE, threads.core_share)
    # unless train.threads is given.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, core_share() // nproc)))
    args = parse_args(
        [
            "--standalone",
            f"--nproc-per-node={nproc}",
            "--monitor-interval=0.2",  # a dead rank is noticed within 0.2 s
            "--module",
            "mnistkit",
            *worker_args,
        ]
    )
    try:
        torchrun(args)
    except ChildFailedError as exc:
        return _report_failures(exc, nproc)
    except SignalException as exc:
        # Ctrl-C (or SIGTERM) reached the launcher: torchrun forwarded it to every process and
        # waited for them; they stopped at a safe point and saved a checkpoint.
        print(f"interrupted ({signal.Signals(exc.sigval).name}): all processes stopped", file=sys.stderr)
        return 130
    return 0


def _report_failures(exc: Any, nproc: int) -> int:
    """A line per process that ended, in rank order (their own messages are above): the ones
    that failed by themselves, the ones that stopped because they lost a peer (exit code 3,
    ``PeerStopped``), and the ones torchrun stopped with SIGTERM.

    Which process exits first is a race: the process that failed closes its connections before
    its interpreter has finished exiting, so its peers may stop, and torchrun may send it SIGTERM
    while it is still exiting. The exit code is the lowest-ranked own failure's.
    """
    failures = exc.failures  # global rank -> ProcessFailure
    if not failures:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if all(f.exitcode == 130 for f in failures.values()):
        print(
            "interrupted: all processes stopped; continue with: "
            f"mnistkit run --resume RUN_DIR --nproc {nproc}",
            file=sys.stderr,
        )
        return 130
    sigterm, peer = -int(signal.SIGTERM), PeerStopped.exit_code
    own = {r: f for r, f in failures.items() if f.exitcode not in (sigterm, peer)}
    for rank, f in sorted(failures.items()):
        if f.exitcode == sigterm:
            how = "was stopped by torchrun (SIGTERM)"
        elif f.exitcode == peer:
            how = "stopped: it lost its connection to another process"
        elif f.exitcode < 0:
            how = f"was killed by {f.signal_name()}"
        else:
            how = f"exited with code {f.exitcode}"
        print(f"error: process rank {rank} (pid {f.pid}) {how}", file=sys.stderr)
    print("       each process's own message is above", file=sys.stderr)
    code = next(iter(sorted(own.items())))[1].exitcode if own else 1
    return code if code > 0 else 1


def peer_failure(exc: BaseException, lost: str | None = None) -> str | None:
    """A short message when ``exc`` is a collective failing because another process died;
    ``lost``: its machine, when the job spans several (``Context.lost_peer``)."""
    text = str(exc)
    signs = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket closed")
    if any(s in text for s in signs) and lost:
        return (
            f"lost node {lost}: the connection to it closed (its process was killed or failed; "
            "its own message, if any, is in its output); the last checkpoint is kept, continue "
            "with --resume"
        )
    if any(s in text for s in signs):
        return (
            "stopped: another process of this job failed or was killed (the connection to it "
            "closed); its own message, if it printed one, is above"
        )
    return None

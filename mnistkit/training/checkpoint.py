"""Checkpoints: atomic, crash-safe writes and safe (``weights_only``) loads.

A checkpoint is a plain dict of tensors, dicts, lists, tuples, ints, floats, strings, bools and
None (model/optimizer/scheduler state_dicts, RNG states, the recipe, metric rows). Writing goes
to a temporary file in the same directory which is renamed over the final name only once it is
complete and on disk, so a crash or ``kill -9`` at any moment leaves the previous checkpoint
intact. Loading uses ``torch.load(weights_only=True)``, which never runs code from the file.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import signal
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_path

#: Test hook: set to a checkpoint's file name (e.g. ``last.pt``) to SIGKILL the process halfway
#: through writing that file, or to ``NAME:N`` (e.g. ``last.pt:3``) to do so only during this
#: process's N-th write of that name. See :func:`save_checkpoint`.
CRASH_ENV = "MNISTKIT_CRASH_DURING_CHECKPOINT"

_writes: dict[str, int] = {}  # file name -> writes so far in this process (for the crash hook)


def _first_non_plain(obj: Any, where: str = "state") -> tuple[str, str] | None:
    """Locate the first value a ``weights_only`` load would refuse: (where, type name)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _first_non_plain(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            found = _first_non_plain(value, f"{where}[{i}]")
            if found:
                return found
        return None
    # Exact types: numpy.float64 is a float subclass, yet a safe load refuses it.
    if obj is None or type(obj) in (bool, int, float, str):
        return None
    if isinstance(obj, torch.Tensor | torch.dtype | torch.device):
        return None
    return where, f"{type(obj).__module__}.{type(obj).__qualname__}"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: the file is either the old one or the new one.

    The state is serialised in memory, checked to load back with ``weights_only=True`` (so a
    checkpoint that could not be resumed is never written), written to ``.<name>.tmp-<pid>`` in
    the same directory, flushed and fsynced, renamed onto ``path`` and the directory fsynced.
    Temp files left by killed writers are removed first. The parent directory is created.

    Test hook: if the environment variable ``MNISTKIT_CRASH_DURING_CHECKPOINT`` equals
    ``path.name``, the process writes about half of the bytes to the temp file and then kills
    itself with SIGKILL, simulating ``kill -9`` mid-write. ``NAME:N`` does so only on the N-th
    write of that name by this process (1-based), e.g. ``last.pt:3`` for the third epoch's.

    Raises :class:`RunError` if the state holds an object a safe load would refuse, or if the
    file cannot be written.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    _check_loadable(data, state, path)

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            if _crash_now(path.name):
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            f.write(data)
    except OSError as e:
        raise RunError(f"cannot write checkpoint {path}: {e}") from e


def _crash_now(name: str) -> bool:
    """Whether the crash test hook (:data:`CRASH_ENV`) fires for this write of ``name``."""
    _writes[name] = _writes.get(name, 0) + 1
    target, _, nth = os.environ.get(CRASH_ENV, "").partition(":")
    if target != name:
        return False
    return not nth or (nth.isdigit() and int(nth) == _writes[name])


def _check_loadable(data: bytes, state: dict[str, Any], path: Path) -> None:
    """Refuse to write a checkpoint that :func:`load_checkpoint` would refuse to read."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _first_non_plain(state)
        what = f"{found[0]} is a {found[1]}" if found else _torch_reason(str(e))
        raise RunError(
            f"cannot write checkpoint {path}: {what}, which a safe load (weights_only) refuses; "
            "checkpoint state may hold only tensors, dicts, lists, tuples, numbers, strings, "
            "bools and None (convert numpy values with float()/int()/torch.as_tensor())"
        ) from None


def _torch_reason(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln:
            return ln
    return lines[-1] if lines else "unknown reason"


# Opcodes that import a module attribute: the only way a pickle can reach code.
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING"}


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals a checkpoint's pickle imports, found without unpickling anything.

    Returns None when the file is not a well-formed pickle (or torch zip of one): corrupt.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                raw = zf.read(names[0])
        else:
            raw = path.read_bytes()
        found: list[str] = []
        strings: list[str] = []
        # pickletools.genops only decodes opcodes and their arguments; it builds no objects.
        for op, arg, _pos in pickletools.genops(io.BytesIO(raw)):
            if op.name in _STRING_OPS and isinstance(arg, str):
                strings.append(arg)
            elif op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
        return found
    except Exception:
        return None


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, never running code from the file.

    Raises :class:`RunError` (never a traceback) when the file is missing, unreadable, truncated
    or corrupt, or holds objects other than tensors and plain data.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(
            f"checkpoint {path} does not exist: the run may not have finished an epoch yet "
            "(checkpoints are written at the end of each epoch)"
        )
    if not path.is_file():
        raise RunError(f"checkpoint {path} is not a file")
    try:
        with warnings.catch_warnings():
            # Raised for any non-torch pickle, which is refused below with a clearer message.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refusals and some kinds of garbage both surface as UnpicklingError;
        # tell them apart by parsing (not executing) the pickle's opcodes.
        refs = _pickle_globals(path)
        if "GLOBAL" in str(e) or refs:
            ref = _global_in(str(e)) or (refs[0] if refs else "")
            raise RunError(
                f"refused to load checkpoint {path}: it contains objects other than tensors and "
                f"plain data{f' (it references {ref})' if ref else ''}, and loading it could "
                "run code. Only load checkpoints written by mnistkit."
            ) from None
        raise _corrupt(path, e) from None
    except OSError as e:
        raise RunError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # RuntimeError (bad zip), EOFError (empty), KeyError, ValueError...
        raise _corrupt(path, e) from None
    if not isinstance(state, dict):
        raise RunError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict: it was not written by mnistkit"
        )
    return state


def _global_in(message: str) -> str:
    m = re.search(r"GLOBAL\s+([\w.]+)", message)
    return m.group(1) if m else ""


def _corrupt(path: Path, e: BaseException) -> RunError:
    reason = _torch_reason(str(e)).split(". ")[0][:120] if str(e) else ""
    return RunError(
        f"checkpoint {path} is truncated or corrupt and cannot be loaded "
        f"({type(e).__name__}{': ' + reason if reason else ''}); "
        "delete it and start the run again, or resume from another checkpoint"
    )


def _is_plain(value: Any) -> bool:
    # Exact container types: older torch (< 2.4) refuses e.g. collections.Counter.
    if value is None or type(value) in (bool, int, float, str):
        return True
    if isinstance(value, torch.Tensor):
        return True
    if type(value) in (list, tuple):
        return all(_is_plain(v) for v in value)
    if type(value) in (dict, OrderedDict):
        return all(type(k) in (int, str) and _is_plain(v) for k, v in value.items())
    return False


def plain_scheduler_state(sched: Any) -> dict[str, Any]:
    """``sched.state_dict()`` without entries a ``weights_only`` load refuses.

    ``load_state_dict`` of torch's schedulers does ``self.__dict__.update(state)``, so an
    entry left out simply keeps the value the constructor set; the entries dropped here are
    constructor-fixed ones: ``OneCycleLR.anneal_func`` (a function, torch < 2.4),
    ``MultiStepLR.milestones`` (a Counter, torch < 2.4), ``SWALR.anneal_func``. LambdaLR's
    ``lr_lambdas`` must stay a list (its ``load_state_dict`` pops it): non-plain items become
    None, which it skips.
    """
    out: dict[str, Any] = {}
    for key, value in sched.state_dict().items():
        if key == "lr_lambdas" and isinstance(value, list):
            out[key] = [v if _is_plain(v) else None for v in value]
        elif _is_plain(value):
            out[key] = value
    return out

"""Training checkpoints: atomic save, safe load (``weights_only=True``), RNG state capture.

A checkpoint is a plain dict of tensors and primitive containers only (no custom classes), so it
loads with ``torch.load(weights_only=True)`` — a pickle from an untrusted source cannot run code —
and on any device via ``map_location``. Keys::

    format           "detkit-checkpoint"
    version          1
    model            model state dict
    ema              {"module": state dict, "updates", "decay", "tau"} or None
    optimizer        optimizer state dict
    scaler           GradScaler state dict
    scheduler        {"step_count": int}
    epoch            epochs completed
    step             optimizer steps completed
    batches_done     micro-batches consumed in the current (unfinished) epoch, 0 at an epoch end
    rng              capture_rng_state()
    cfg_text         the class-patched cfg
    class_names      list[str]
    settings         the resolved training settings (JSON-compatible dict)
    best_map         best validation mAP so far
    history          list of per-epoch result dicts (floats/ints/str)
"""
from __future__ import annotations

import os
import pickle
import random
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.errors import TrainError

CHECKPOINT_FORMAT = "detkit-checkpoint"
CHECKPOINT_VERSION = 1


def _torch_load(path: Path, map_location):
    """``torch.load(weights_only=True)``, without torch's "Detected pickle protocol N" warning for
    a corrupt file (the caller reports the file as unusable in its own words)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location=map_location, weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA, when present) RNG states as tensors/primitives."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only when CUDA is present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync of a folder is advisory (not supported everywhere)
    finally:
        os.close(fd)


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    A reader never sees a half-written file: either the previous checkpoint or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # like mkstemp, but with the usual permissions (0666 minus umask) instead of mkstemp's 0600
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # full disk, quota, I/O error (torch.save's zip writer re-raises them as RuntimeError): say
        # what happened and what is left
        os_err = exc if isinstance(exc, OSError) else exc.__context__
        if not isinstance(os_err, OSError):
            raise
        kept = f"; the previous {path.name} is intact" if path.is_file() else "; no previous checkpoint"
        raise TrainError(f"could not write checkpoint ({os_err.strerror or os_err}){kept}", path=path) from exc
    _fsync_dir(path.parent)
    return path


def _other_good_checkpoint(path: Path) -> Path | None:
    """Another checkpoint next to ``path`` that loads (only consulted on the error path)."""
    for name in ("last.pt", "best.pt"):
        other = path.parent / name
        if other == path or not other.is_file():
            continue
        try:
            payload = _torch_load(other, "cpu")
        except Exception:  # noqa: BLE001 - any failure means "not a usable fallback"
            continue
        if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
            return other
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a detkit checkpoint safely (``weights_only=True``) onto ``map_location``.

    Raises:
        TrainError: missing, truncated/corrupt, not a detkit checkpoint, or carrying anything other
            than tensors and primitive containers (e.g. a pickle that would run code). The message
            names the file and, when one exists next to it, another checkpoint to fall back on.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainError("checkpoint not found", path=path)
    try:
        payload = _torch_load(path, map_location)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "GLOBAL" in text or "Unsupported global" in text or "Unsupported class" in text:
            why = next((ln.strip().split(" was not an allowed")[0].replace("WeightsUnpickler error: ", "")
                        for ln in text.splitlines() if "Unsupported" in ln),
                       "it holds objects other than tensors and plain containers")
            raise TrainError(f"refused to load: not a plain tensor checkpoint (weights_only=True; {why[:200]}). "
                             "Checkpoints from untrusted sources can run code; detkit never unpickles them"
                             + _fallback_hint(path), path=path) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise TrainError(f"corrupt or truncated checkpoint ({first[:200]})" + _fallback_hint(path),
                         path=path) from None
    except Exception as exc:  # noqa: BLE001 - junk bytes make torch's unpickler raise IndexError, TypeError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"corrupt or truncated checkpoint ({first[:200]})" + _fallback_hint(path),
                         path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"not a detkit checkpoint (no format={CHECKPOINT_FORMAT!r} key)", path=path)
    return payload


def _fallback_hint(path: Path) -> str:
    other = _other_good_checkpoint(path)
    return f"; previous checkpoint: {other}" if other is not None else ""


def is_checkpoint_file(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a torch zip checkpoint (as opposed to a darknet .weights file)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False

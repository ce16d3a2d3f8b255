"""Pruned models on disk: ``policy.json`` + ``model.safetensors``. No pickle anywhere.

A pruned model is always *policy + weights*: :func:`load_pruned` rebuilds the structure from the
policy (on the ``meta`` device, so nothing is initialised twice) and loads the weights strictly.
Dense checkpoints from elsewhere are read by :func:`read_state_dict`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vitprune.evaluators.describe import create_dense
from vitprune.evaluators.surgery import apply_policy
from vitprune.spaces import InputError, Policy

log = logging.getLogger(__name__)

POLICY_FILE = "policy.json"
WEIGHTS_FILE = "model.safetensors"


def build_pruned(policy: Policy) -> nn.Module:
    """The structure of the model ``policy`` describes, on the ``meta`` device (no weights)."""
    return apply_policy(create_dense(policy.base, device="meta"), policy)


def _check_state(model: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{source}: weights do not match the policy "
            f"(missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''})"
        )
    for key, shape in expected.items():
        if got[key] != shape:
            raise InputError(f"{source}: {key} has shape {list(got[key])}, the policy needs {list(shape)}")


def save_pruned(model: nn.Module, policy: Policy, directory: str | os.PathLike[str]) -> Path:
    """Write ``policy.json`` and ``model.safetensors`` to ``directory``, atomically.

    The files are written to a temporary sibling directory that then replaces ``directory``, so a
    failure leaves any earlier contents intact and never a half-written model.

    Raises:
        InputError: ``model``'s weights are not those of the model ``policy`` builds.
    """
    directory = Path(directory)
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    _check_state(build_pruned(policy), state, source=str(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / POLICY_FILE).write_text(policy.to_json())
        save_file(state, staging / WEIGHTS_FILE, metadata={"format": policy.format})
        _default_permissions(staging)
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(retired)
            staging.rename(directory)
            shutil.rmtree(retired)
        else:
            staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def _default_permissions(directory: Path) -> None:
    """``mkdtemp`` makes private directories; give the result the permissions of a normal mkdir."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def read_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file (or the ``policy.json`` of a model directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / POLICY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such policy file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return Policy.from_json(text)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def load_pruned(
    directory: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Policy]:
    """Rebuild the model saved by :func:`save_pruned` and load its weights strictly.

    Returns:
        ``(model, policy)``; the model is in eval mode on ``device``.

    Raises:
        InputError: the directory, its policy or its weights are missing or inconsistent.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a model directory (expected {POLICY_FILE} and {WEIGHTS_FILE})")
    policy = read_policy(directory)
    weights = directory / WEIGHTS_FILE
    state = _read_safetensors(weights, device=str(device))
    model = build_pruned(policy)
    _check_state(model, state, source=str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [
        name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta
    ]
    if leftover:
        raise RuntimeError(f"load_pruned: {leftover[0]} was not restored from {weights}")
    return model.eval(), policy


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a dense checkpoint: a safetensors file, a ``torch.save`` state dict (loaded with
    ``weights_only=True``) possibly nested under ``model`` / ``state_dict`` / ``model_ema``, or a
    vitprune model directory. A ``module.`` prefix (DDP) is stripped.

    Raises:
        InputError: one line naming the file; vitprune never offers to unpickle arbitrary objects.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).exists():
            raise InputError(f"{path}: directory has no {WEIGHTS_FILE}")
        return _read_safetensors(path / WEIGHTS_FILE)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for key in ("model", "state_dict", "model_ema", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _read_safetensors(path: Path, *, device: str = "cpu") -> dict[str, Tensor]:
    try:
        return dict(load_file(path, device=device))
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None


def _read_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with ``argparse.Namespace`` allowed (timm's training
    checkpoints carry their arguments in one; it only holds attributes)."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")  # pickle-protocol chatter on files that are not checkpoints
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(error))
        if found is None:
            raise InputError(f"{path}: not a readable checkpoint (not a torch.save file)") from None
        raise InputError(
            f"{path}: not a readable checkpoint (it holds a {found.group(1)} object, and vitprune never "
            "unpickles arbitrary objects); save the weights alone, with torch.save(model.state_dict(), "
            "...) or as safetensors"
        ) from None
    except Exception as error:  # zip and storage errors of torch.load
        raise InputError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {_first_line(error)})"
        ) from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

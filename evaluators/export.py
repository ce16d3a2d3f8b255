"""Pruned models outside PyTorch: ONNX, checked against onnxruntime before anyone relies on it.

A pruned model is plain timm modules with smaller weights (plus the token-selection and padded
attention modules of :mod:`vitprune.evaluators.modules`), so the standard exporters work:
``torch.onnx.export``, ``torch.export.export``, ``torch.jit.trace`` and ``torch.compile``
(``tests/evaluators/test_export.py`` keeps all four working).

>>> error = export_onnx(model, policy, "out/model.onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import nn

from vitprune.spaces import InputError, Policy


def export_onnx(
    model: nn.Module,
    policy: Policy,
    path: str | os.PathLike[str],
    *,
    batch_size: int = 4,
    tolerance: float = 1e-4,
) -> float:
    """Write ``model`` as ONNX (batch dimension dynamic) and compare onnxruntime's output with
    PyTorch's on a random batch of ``batch_size`` images.

    Returns:
        The largest absolute difference between the two outputs.

    Raises:
        InputError: onnx or onnxruntime are not installed (``pip install 'vitprune[onnx]'``).
        RuntimeError: the outputs differ by more than ``tolerance`` (relative to their scale).
    """
    try:
        import onnxruntime
    except ImportError:
        raise InputError("--onnx: needs onnx and onnxruntime: pip install 'vitprune[onnx]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    base = policy.base
    size = (base.grid_size[0] * base.patch_size[0], base.grid_size[1] * base.patch_size[1])
    example = torch.randn(2, base.in_chans, *size)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each pass on stdout
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim.AUTO},),  # any batch size
        )
    images = torch.randn(batch_size, base.in_chans, *size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"images": images.numpy()})
    with torch.inference_mode():
        expected = model(images).numpy()
    error = float(abs(exported - expected).max())
    scale = max(1.0, float(abs(expected).max()))
    if error > tolerance * scale:
        raise RuntimeError(
            f"{path}: onnxruntime differs from PyTorch by {error:.3g} (tolerance {tolerance:g})"
        )
    return error

"""Pruned models leave PyTorch: ONNX (checked against onnxruntime), torch.export, torch.jit.trace
and torch.compile all work on policies that touch every dimension."""

import random

import pytest
import torch
from helpers import random_policy, tiny_model

from vitprune.evaluators import apply_policy
from vitprune.evaluators.export import export_onnx


@pytest.fixture(scope="module", params=["deit", "deit_distilled"])
def pruned(request):
    model, base = tiny_model(request.param)
    policy = random_policy(base, random.Random(3))
    return apply_policy(model, policy).eval(), policy


def images(policy, n=3, seed=1):
    base = policy.base
    size = (base.grid_size[0] * base.patch_size[0], base.grid_size[1] * base.patch_size[1])
    return torch.randn(n, base.in_chans, *size, generator=torch.Generator().manual_seed(seed))


def test_onnx_export_matches_onnxruntime_at_any_batch_size(pruned, tmp_path):
    pytest.importorskip("onnxruntime")
    model, policy = pruned
    error = export_onnx(model, policy, tmp_path / "model.onnx", batch_size=5)
    assert error < 1e-4 and (tmp_path / "model.onnx").stat().st_size > 0


def test_torch_export_jit_trace_and_compile_agree_with_eager(pruned):
    model, policy = pruned
    x = images(policy)
    with torch.inference_mode():
        expected = model(x)
    exported = torch.export.export(model, (x,)).module()
    traced = torch.jit.trace(model, (x,), check_trace=False)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        for name, candidate in (("torch.export", exported), ("jit.trace", traced), ("compile", compiled)):
            torch.testing.assert_close(candidate(x), expected, rtol=1e-4, atol=1e-5, msg=name)

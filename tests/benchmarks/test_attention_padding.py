"""benchmarks/attention_padding.py: the two attention calls it times compute the same thing."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def script(benchmarks_on_path):
    import attention_padding

    return attention_padding


@pytest.mark.parametrize(("qk", "v"), [(16, 56), (48, 16), (32, 32)])
def test_the_fused_padded_call_and_the_unfused_one_agree(script, qk, v):
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 17, qk, generator=generator) for _ in range(2))
    value = torch.randn(2, 3, 17, v, generator=generator)
    fused, math = script.fused(q, k, value), script.math(q, k, value)
    assert fused.shape == math.shape == (2, 3, 17, v)
    torch.testing.assert_close(fused, math, rtol=1e-5, atol=1e-5)


def test_a_missing_search_folder_is_one_line_and_status_2(script, tmp_path, capsys):
    assert script.main(["--search-runs", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]

"""HSIC and SNP: their building blocks against hand-computed values, and planted q/k dims."""

import math

import pytest
import torch
from helpers import calibration, tiny_model

from vitprune.evaluators.criteria import get_criterion
from vitprune.evaluators.criteria.hsic import centred, dependence, gram, mrmr_order, normalised_hsic
from vitprune.evaluators.criteria.snp import pivoted_residuals, qk_removal_kl

# -- HSIC ------------------------------------------------------------------------------------------


def test_gaussian_gram_uses_the_median_squared_distance():
    k = gram(torch.tensor([[0.0], [1.0], [3.0]]))  # squared distances 1, 9, 4: median 4, 2σ² = 8
    expected = torch.tensor(
        [[1, math.exp(-1 / 8), math.exp(-9 / 8)], [0, 1, math.exp(-4 / 8)], [0, 0, 1]], dtype=torch.float64
    )
    torch.testing.assert_close(k, expected + expected.triu(1).T, rtol=0, atol=1e-12)


def test_linear_normalised_hsic_is_the_squared_correlation():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]])  # Pearson correlation 0.8
    value = normalised_hsic(centred(gram(x, kernel="linear")), centred(gram(y, kernel="linear")))
    assert float(value) == pytest.approx(0.64, abs=1e-12)


def test_normalised_hsic_is_one_for_identical_and_zero_for_constant_features():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    kx = centred(gram(x))
    assert float(normalised_hsic(kx, kx)) == pytest.approx(1.0, abs=1e-12)
    assert float(normalised_hsic(kx, centred(gram(torch.ones(10, 3))))) == 0.0


def test_vectorised_dependence_matches_the_trace_formula_unit_by_unit():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(5, 12, 3, generator=g)
    features[3] = 7.0  # a constant unit
    target = torch.randn(12, 4, generator=g)
    n = 12
    h = torch.eye(n, dtype=torch.float64) - 1 / n
    for kernel in ("gaussian", "linear"):
        lk = gram(target, kernel=kernel)
        got = dependence(features, centred(lk), kernel=kernel, chunk=2)
        for u in range(5):
            k = gram(features[u], kernel=kernel)
            hsic = torch.trace(k @ h @ lk @ h)
            norm = torch.sqrt(torch.trace(k @ h @ k @ h) * torch.trace(lk @ h @ lk @ h))
            want = 0.0 if u == 3 else float(hsic / norm)
            assert float(got[u]) == pytest.approx(want, abs=1e-10), (kernel, u)


def test_mrmr_skips_a_duplicate_until_last():
    relevance = torch.tensor([0.9, 0.8, 0.9, 0.1], dtype=torch.float64)
    redundancy = torch.tensor(
        [[1.0, 0.5, 1.0, 0.0], [0.5, 1.0, 0.5, 0.2], [1.0, 0.5, 1.0, 0.0], [0.0, 0.2, 0.0, 1.0]],
        dtype=torch.float64,
    )
    # gains after 0: 0.8·0.5, 0.9·0, 0.1·1 -> 1; then 0, 0.1·0.8 -> 3; then 2
    assert mrmr_order(relevance, redundancy) == [0, 1, 3, 2]


def test_hsic_options_are_checked():
    model, base = tiny_model("deit")
    with pytest.raises(ValueError, match="kernel must be 'gaussian' or 'linear'"):
        get_criterion("hsic")(model, base=base, data=calibration(model, base), kernel="rbf")


def test_hsic_linear_kernel_scores_a_zeroed_head_lowest():
    model, base = tiny_model("deit")
    with torch.no_grad():
        model.blocks[1].attn.proj.weight[:, 2 * base.head_dim : 3 * base.head_dim] = 0
    scores = get_criterion("hsic")(model, base=base, data=calibration(model, base), kernel="linear")
    assert scores.criterion == "hsic-linear"
    assert scores.heads[1][2] == min(scores.heads[1]) == 0.25


# -- SNP -------------------------------------------------------------------------------------------


def test_pivoted_residuals_by_hand():
    # a = (1, 0), b = a, c = (0, 2): c first (2), then a (1), then b (0: in the span of a)
    gram_abc = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    torch.testing.assert_close(pivoted_residuals(gram_abc), torch.tensor([1.0, 0.0, 2.0]).double())
    # a = (3, 0), b = (1, 1): a first (3), then b minus its projection on a, (0, 1)
    torch.testing.assert_close(
        pivoted_residuals(torch.tensor([[9.0, 3.0], [3.0, 2.0]])), torch.tensor([3.0, 1.0]).double()
    )


def test_qk_removal_kl_matches_explicit_softmaxes():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 6, 5, generator=g)
    got = qk_removal_kl(q, k, scale=0.5)
    attn = (0.5 * q.double() @ k.double().mT).softmax(-1)
    for d in range(5):
        keep = [i for i in range(5) if i != d]
        pruned = (0.5 * q[..., keep].double() @ k[..., keep].double().mT).softmax(-1)
        kl = (attn * (attn.log() - pruned.log())).sum(-1).sum(dim=(0, 2))  # (H,)
        torch.testing.assert_close(got[:, d], kl, rtol=1e-9, atol=1e-12)


def test_snp_scores_zero_and_constant_key_dims_lowest():
    """In layer 0, head 1: dims 3 and 7 have zero q and k rows; dim 11 has a key that is the same
    for every token (zero k weights, a bias), so it shifts each attention row by a constant."""
    model, base = tiny_model("deit")
    D, hd = base.embed_dim, base.head_dim
    qkv = model.blocks[0].attn.qkv
    with torch.no_grad():
        for d in (3, 7):
            for row in (hd + d, D + hd + d):  # q and k rows of head 1, dim d
                qkv.weight[row] = 0
                qkv.bias[row] = 0
        qkv.weight[hd + 11] *= 10  # a large query component...
        qkv.weight[D + hd + 11] = 0  # ...against a constant key
        qkv.bias[D + hd + 11] = 3.0
    scores = get_criterion("snp")(model, base=base, data=calibration(model, base))
    head = scores.qk[0][1]
    assert max(head[3], head[7]) < 1e-12  # zero up to rounding
    assert head[11] < 1e-9
    assert sorted(range(hd), key=lambda d: head[d])[:3] == [3, 7, 11]
    assert min(head[d] for d in range(hd) if d not in (3, 7, 11)) > 1e-4


def test_snp_value_dims_with_a_zero_proj_column_score_zero():
    model, base = tiny_model("deit")
    hd = base.head_dim
    with torch.no_grad():
        model.blocks[2].attn.proj.weight[:, 3 * hd + 5] = 0  # head 3, v dim 5
    scores = get_criterion("snp")(model, base=base, data=calibration(model, base))
    assert scores.v[2][3][5] == 0.0
    assert min(x for h, dims in enumerate(scores.v[2]) for d, x in enumerate(dims) if (h, d) != (3, 5)) > 0

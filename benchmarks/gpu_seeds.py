"""The seed papers' own configurations as vitprune policies, each next to the paper's claim.

The paper texts in ``/work/shared/papers`` are abstracts and summaries: they give the headline
claims, not the per-layer configurations. Where a configuration comes from elsewhere (issue 10)
or is chosen here, ``policy`` says so. Claims are recorded as the texts state them; what a text
does not state (GPU, batch, precision) is written as not stated, never guessed.

Latency does not depend on *which* units are kept, only on how many, so every policy ranks units
by weight magnitude on random weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_lab import Dense, fit_family

from vitprune.spaces import Policy, Scores, build_policy, uniform_ratios

NOT_STATED = "not stated in the text available here"

# BoundaryDPT on DeiT-B, as issue 10 gives it (0-based block indices).
BOUNDARYDPT_ATTENTION_REMOVED = (0, 3, 7, 8, 11)
BOUNDARYDPT_GELU_REMOVED = (2, 7, 8, 10, 11)


@dataclass(frozen=True)
class Seed:
    """One paper's configuration: which dense model, the policy in words, the claim, a builder."""

    key: str
    paper: str
    model: str  # key of the dense model ("deit_s", "deit_b")
    policy: str  # how the vitprune policy renders the paper's configuration
    claim: dict[str, Any]
    build: Callable[[Dense], tuple[Policy, bool]]  # → (policy, whether its budget was reached)


def _layer_flags(depth: int, removed: tuple[int, ...]) -> tuple[float, ...]:
    """Depth scores that rank exactly ``removed`` lowest (0) and every other layer higher (1)."""
    return tuple(0.0 if i in removed else 1.0 for i in range(depth))


def boundarydpt(dense: Dense) -> tuple[Policy, bool]:
    depth = dense.base.depth
    scores = Scores(
        criterion="boundarydpt-paper-layers",
        attn_layers=_layer_flags(depth, BOUNDARYDPT_ATTENTION_REMOVED),
        act_layers=_layer_flags(depth, BOUNDARYDPT_GELU_REMOVED),
    )
    policy = build_policy(
        dense.base,
        scores,
        uniform_ratios(depth),
        drop_attn=len(BOUNDARYDPT_ATTENTION_REMOVED),
        drop_act=len(BOUNDARYDPT_GELU_REMOVED),
    )
    return policy, True


def snp(budget_macs: float) -> Callable[[Dense], tuple[Policy, bool]]:
    def build(dense: Dense) -> tuple[Policy, bool]:
        depth = dense.base.depth

        def family(s: float) -> Policy:
            return build_policy(dense.base, dense.scores, uniform_ratios(depth, qk=s, v=s, mlp=s))

        return fit_family(family, budget_macs / dense.full_size_macs * dense.macs)

    return build


def star_like(dense: Dense) -> tuple[Policy, bool]:
    depth = dense.base.depth

    def family(s: float) -> Policy:
        return build_policy(dense.base, dense.scores, uniform_ratios(depth, token_keep=s, token_start=3))

    return fit_family(family, 0.5 * dense.macs)


def hou_kung(dense: Dense) -> tuple[Policy, bool]:
    depth = dense.base.depth

    def family(s: float) -> Policy:
        r = s**0.5
        ratios = uniform_ratios(depth, heads=r, mlp=r, token_keep=0.5 + 0.5 * r, token_start=3)
        return build_policy(dense.base, dense.scores, ratios)

    return fit_family(family, 0.6 * dense.macs)


def _claim(**fields: Any) -> dict[str, Any]:
    return {"gpu": NOT_STATED, "batch": NOT_STATED, "precision": NOT_STATED} | fields


SEEDS = (
    Seed(
        key="boundarydpt",
        paper="BoundaryDPT",
        model="deit_b",
        policy=(
            f"attention removed in blocks {list(BOUNDARYDPT_ATTENTION_REMOVED)}, GELU removed in "
            f"{list(BOUNDARYDPT_GELU_REMOVED)} (fc1·fc2 fold into one linear map); widths and tokens "
            "kept. Layer lists from issue 10."
        ),
        claim=_claim(
            speedup=1.58,
            text="BoundaryDPT achieves a 1.58× speedup for DeiT-B while maintaining accuracy",
            source="BoundaryDPT abstract",
        ),
        build=boundarydpt,
    ),
    Seed(
        key="snp_2.0G",
        paper="SNP",
        model="deit_s",
        policy=(
            "q/k dims (jointly) and v dims, SNP's units, plus MLP neurons, one keep ratio in every "
            "layer, projected onto 2.0 G MACs (SNP's per-layer widths are not in the texts here)"
        ),
        claim=_claim(
            speedup=1.40,
            macs=2.0e9,
            gpu="RTX 3090",
            text="DeiT-S pruned to 2.0 G MACs: 1.40× faster on an RTX 3090",
            source="issue 10 (SNP's DeiT-S results); the shared SNP text, a summary, gives only 3.1× "
            "for its most pruned DeiT-S",
        ),
        build=snp(2.0e9),
    ),
    Seed(
        key="snp_1.3G",
        paper="SNP",
        model="deit_s",
        policy="as snp_2.0G, projected onto 1.3 G MACs",
        claim=_claim(
            speedup=1.71,
            macs=1.3e9,
            gpu="RTX 3090",
            text="DeiT-S pruned to 1.3 G MACs: 1.71× faster on an RTX 3090",
            source="issue 10 (SNP's DeiT-S results)",
        ),
        build=snp(1.3e9),
    ),
    Seed(
        key="star_like",
        paper="STAR",
        model="deit_s",
        policy=(
            "patch tokens only: one keep rate per block from block 3 on (the class token's attention "
            "ranks them), projected onto 50 % of MACs; STAR's own rates come from offline metrics "
            "on data, so this static schedule is STAR-like, not STAR's"
        ),
        claim=_claim(
            img_per_s=4256,
            vs_deit_tiny=1.66,
            text="the pruned DeiT-Small reaches a throughput of 4,256 images/s, over 66 % higher than "
            "the (unpruned) DeiT-Tiny",
            source="STAR abstract",
        ),
        build=star_like,
    ),
    Seed(
        key="hou_kung_60",
        paper="Hou & Kung",
        model="deit_s",
        policy=(
            "their three dimensions: heads and MLP neurons at keep ratio r, patch tokens at "
            "0.5 + 0.5·r per block from block 3, projected onto 60 % of MACs"
        ),
        claim=_claim(
            macs_ratio=0.6,
            speedup=None,
            text="reduces 40 % FLOPs without top-1 accuracy loss for DeiT (no latency claim)",
            source="Hou & Kung abstract",
        ),
        build=hou_kung,
    ),
)

"""Shared test helpers: tiny timm ViTs and random policies over every dimension."""

from __future__ import annotations

import random

import timm
import torch

from vitprune.evaluators import describe
from vitprune.spaces import Architecture, LayerPolicy, Policy

# Tiny versions of the timm families vitprune supports: (timm name, create_model overrides).
TINY_MODELS = {
    "deit": ("deit_tiny_patch16_224", {"img_size": 64, "depth": 3, "embed_dim": 64, "num_heads": 4}),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 64, "depth": 3, "embed_dim": 64, "num_heads": 4},
    ),
    "vit_avgpool": (
        "vit_small_patch16_224",
        {
            "img_size": 64,
            "depth": 3,
            "embed_dim": 64,
            "num_heads": 2,
            "class_token": False,
            "global_pool": "avg",
        },
    ),
    "vit_reg_layerscale": (
        "vit_small_patch14_reg4_dinov2",
        {"img_size": 56, "depth": 3, "embed_dim": 64, "num_heads": 4},
    ),
    "vit_clip_prenorm": (
        "vit_base_patch32_clip_224",
        {"img_size": 96, "depth": 3, "embed_dim": 64, "num_heads": 4},
    ),
}


def tiny_model(key: str, *, seed: int = 0, device: str = "cpu") -> tuple[torch.nn.Module, Architecture]:
    """A tiny dense timm model in eval mode with randomised norms/biases/layer scales, and its base."""
    name, args = TINY_MODELS[key]
    torch.manual_seed(seed)
    with torch.device(device):
        model = timm.create_model(name, **args)
    if device != "meta":
        with torch.no_grad():  # timm initialises biases to 0 and norms to 1: make every term matter
            for param_name, param in model.named_parameters():
                if param_name.endswith("bias") or "norm" in param_name or "gamma" in param_name:
                    param.add_(torch.randn_like(param) * 0.2)
    return model.eval(), describe(model, name=name, model_args=args)


def random_subset(rng: random.Random, size: int, keep: int) -> tuple[int, ...]:
    return tuple(sorted(rng.sample(range(size), keep)))


def random_policy(
    base: Architecture, rng: random.Random, *, prune_tokens: bool = True, prune_embed: bool = True
) -> Policy:
    """A random valid policy touching every dimension (heads, q/k, v, neurons, tokens, depth and,
    half the time, the residual width)."""
    layers = []
    tokens = base.num_patches
    for _ in range(base.depth):
        attention = rng.random() > 0.25
        heads: tuple[int, ...] = ()
        qk: tuple[tuple[int, ...], ...] = ()
        v: tuple[tuple[int, ...], ...] = ()
        if attention:
            heads = random_subset(rng, base.num_heads, rng.randint(1, base.num_heads))
            qk_dim, v_dim = rng.randint(1, base.head_dim), rng.randint(1, base.head_dim)
            qk = tuple(random_subset(rng, base.head_dim, qk_dim) for _ in heads)
            v = tuple(random_subset(rng, base.head_dim, v_dim) for _ in heads)
        prior, fusion = None, 1.0
        if attention and prune_tokens and base.class_token and rng.random() < 0.6:
            entering, tokens = tokens, rng.randint(1, tokens)
            if tokens < entering and rng.random() < 0.5:
                prior = tuple(rng.uniform(0.01, 1.0) for _ in range(base.num_patches))
                fusion = rng.random()
        mlp = random_subset(
            rng, base.mlp_hidden, rng.randint(0, base.mlp_hidden) if rng.random() > 0.1 else 0
        )
        layers.append(
            LayerPolicy(
                attention=attention,
                heads=heads,
                qk=qk,
                v=v,
                activation=rng.random() > 0.4,
                mlp=mlp,
                keep_tokens=tokens,
                token_prior=prior,
                token_fusion=fusion,
            )
        )
    embed = None
    if prune_embed and rng.random() < 0.5:
        embed = random_subset(rng, base.embed_dim, rng.randint(1, base.embed_dim - 1))
    return Policy(base=base, layers=tuple(layers), embed=embed)


def calibration(model, base, *, batches=2, size=8, seed=0):
    """Random images labelled with the model's own predictions (criteria tests have no data set)."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(batches):
        images = torch.randn(size, base.in_chans, *base.model_args["img_size"], generator=g)
        with torch.no_grad():
            data.append((images, model(images).argmax(-1)))
    return data

"""LoRA updates as matrices: what an adapter adds to each weight, its norm, and random updates of the same norms.

PEFT's LoRA adds delta W = s B A to each adapted weight W [out, in] (A [r, in], B [out, r], s = alpha / r).
`update_norm` is ||delta W|| over every adapted module, sqrt(sum_m ||s_m B_m A_m||_F^2); `random_directions`
replaces every (A, B) by Gaussian matrices rescaled so that each module's ||delta W||_F is unchanged: the
reference a trained adapter's drift is read against (same modules, same rank, same norms, random directions).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from peft.tuners.lora import LoraLayer
from torch import nn


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer, str]]:
    """(module name, LoRA layer, adapter name) for every adapter of every LoRA layer of `model`."""
    return [
        (name, module, adapter)
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
        for adapter in module.lora_A
    ]


def _frobenius_squared(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """||s B A||_F^2 = s^2 trace(B^T B A A^T) = s^2 sum((B^T B) * (A A^T)) in float64, for A [r, in], B [out, r]
    (r x r products: the [out, in] matrix is never formed).
    """
    a, b = a.detach().double(), b.detach().double()
    return scale**2 * ((b.T @ b) * (a @ a.T)).sum()


def _squared_norm(module: LoraLayer, adapter: str) -> torch.Tensor:
    """||s B A||_F^2 of one adapter of one LoRA layer."""
    return _frobenius_squared(module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter])


@torch.no_grad()
def update_norm(model: nn.Module) -> float:
    """sqrt(sum over adapted modules of ||s B A||_F^2): the norm of the whole LoRA update (0 for a fresh adapter)."""
    layers = lora_layers(model)
    if not layers:
        return 0.0
    squares = [_squared_norm(module, adapter) for _, module, adapter in layers]
    return torch.stack([x.to(squares[0].device) for x in squares]).sum().sqrt().item()  # one device sync


def _generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator per (seed, module name): a module's draw does not depend on the others."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@contextlib.contextmanager
def random_directions(model: nn.Module, seed: int) -> Iterator[None]:
    """Inside, every LoRA module's (A, B) is Gaussian noise (seeded per module name) with B rescaled so that
    ||s B' A'||_F equals the trained ||s B A||_F of that module (a zero update stays zero); the trained weights are
    restored on leaving, whatever happens inside.
    """
    saved = []
    try:
        with torch.no_grad():
            for name, module, adapter in lora_layers(model):
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                target = _squared_norm(module, adapter).clamp(min=0).sqrt()
                saved.append((a, b, a.detach().clone(), b.detach().clone()))
                generator = _generator(seed, name)
                new_a = torch.randn(a.shape, generator=generator, dtype=torch.float64)
                new_b = torch.randn(b.shape, generator=generator, dtype=torch.float64)
                drawn = _frobenius_squared(new_a, new_b, module.scaling[adapter]).sqrt()
                a.copy_(new_a.to(a.dtype))
                b.copy_((new_b * (target.cpu() / drawn)).to(b.dtype))
        yield
    finally:
        with torch.no_grad():
            for a, b, old_a, old_b in saved:
                a.copy_(old_a)
                b.copy_(old_b)

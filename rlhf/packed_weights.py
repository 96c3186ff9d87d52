"""Decoding on a CPU with oneDNN-prepacked weights, LoRA adapters merged into the packed copy.

Written by hand because neither transformers nor peft has it: at decoding batch sizes (a few rows a step) ATen's
fp32 `linear` repacks the weight on every call and reaches a third of the memory bandwidth, while oneDNN's
prepacked kernels run 1.5-3x faster (docs/benchmarks.md); and peft's unmerged LoRA adds two small matrix products
and a cast per layer and step. Inductor's weight freezing would prepack too, but it folds the parameters into the
compiled graph, so it would recompile after every policy update. Here the packed copies live only inside one
`generate` call; the model's own weights are never touched (no merge and unmerge, whose rounding would drift)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

# Below about a megabyte of fp32 weights, oneDNN's per-call overhead (~45 us) outweighs what packing saves.
MIN_PACKED_ELEMENTS = 1 << 18


def lora_is_plain_sum(layer) -> bool:
    """Whether a peft LoRA linear layer computes base + the sum of its active adapters' deltas, whichever adapters
    are active when it runs: no adapter is a variant (DoRA, ...) or has dropout that is live in training mode."""
    return all(name not in layer.lora_variant and (not layer.training or isinstance(layer.lora_dropout[name], nn.Identity))
               for name in layer.lora_A)


def merged_weight(layer) -> torch.Tensor:
    """The weight a plain peft LoRA linear layer multiplies with: its base weight plus its active adapters' deltas."""
    weight = layer.get_base_layer().weight
    if layer.disable_adapters or layer.merged:
        return weight
    for name in layer.active_adapters:
        if name in layer.lora_A:
            weight = weight + layer.get_delta_weight(name).to(weight.dtype)
    return weight


class PackedLinear:
    """A `forward` for one linear layer that multiplies with a packed copy of `weight()`, made at its first call
    (so that a merged weight exists only for the moment of packing it)."""

    def __init__(self, weight: Callable[[], torch.Tensor], bias: torch.Tensor | None, rows: int):
        self.weight, self.bias, self.rows, self.packed = weight, bias, rows, None

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.packed is None:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight().detach().contiguous(), self.rows)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packable(module: nn.Module, rows: int) -> PackedLinear | None:
    """The packed `forward` for a linear layer or a plain peft LoRA linear layer, tuned for `rows`; None for
    any other module, for weights that are not float32 on the CPU, for layers too small to gain, and for weights
    not whole here (a ZeRO-3 slice outside its gathering)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if isinstance(module, LoraLinear) and type(module.get_base_layer()) is nn.Linear:
        if not lora_is_plain_sum(module):
            return None
        base, weight = module.get_base_layer(), (lambda: merged_weight(module))
    elif type(module) is nn.Linear:
        base, weight = module, (lambda: module.weight)
    else:
        return None
    w = base.weight
    if (w.device.type != "cpu" or w.dtype != torch.float32 or tuple(w.shape) != (base.out_features, base.in_features)
            or w.numel() < MIN_PACKED_ELEMENTS):
        return None
    return PackedLinear(weight, base.bias, rows)


@contextmanager
def packed_linears(model: nn.Module, rows: int):
    """Inside the block, every large enough linear layer of `model` (a LoRA layer with its active adapters merged)
    multiplies with a prepacked copy of its weights, tuned for `rows` rows a step, without autograd (decoding
    needs none). Packs nothing on a GPU, in bf16 or without oneDNN; the copies are dropped on exit."""
    patched: list[nn.Module] = []
    if torch.backends.mkldnn.is_available():
        from peft.tuners.lora.layer import LoraLayer

        inside_lora: set[int] = set()  # the layers a LoRA layer calls: packed (merged) with it, or left as they are
        for module in model.modules():
            if id(module) in inside_lora or "forward" in module.__dict__:
                continue
            if isinstance(module, LoraLayer):
                inside_lora.update(id(m) for m in module.modules())
            forward = packable(module, rows)
            if forward is not None:
                module.forward = forward
                patched.append(module)
    try:
        with torch.no_grad():
            yield
    finally:
        for module in patched:
            del module.forward

"""The model's floating-point work per forward pass, counted by ``torch.utils.flop_counter``.

One forward pass of HTDemucs is one 7.8 s segment; ``apply_model`` (and the fleet's
batched path) advance by ``(1 - overlap) * segment`` = 5.85 s at the default overlap of
0.25, so each second of audio costs ``flops_per_segment / 5.85``.

Two things the counter would miss are put right: PyTorch's fused multi-head-attention
fast path (``aten::_native_multi_head_attention``) does its matrix products inside one
kernel the counter does not see, so it is switched off while counting; and the CPU flash
attention kernel that plain attention then calls has no formula in the counter's table,
so it gets the standard one (``sdpa_flop_count``). Convolutions and matrix products are
counted as 2 FLOPs per multiply-add; the STFT/iSTFT, normalisations and activations are
not counted (a few % of the total).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils import flop_counter

from devkit.models import ModelSize, build_model

__all__ = ["SEGMENT_S", "count_flops"]

SEGMENT_S = 39 / 5
"""htdemucs_6s's segment, seconds."""


@functools.cache
def _register_cpu_flash_attention() -> None:
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry:  # a newer torch may count it itself
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_flash(
        query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
    ) -> int:
        del args, kwargs
        return int(flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape))  # type: ignore[no-untyped-call]


def count_flops(size: ModelSize = "full", *, overlap: float = 0.25) -> dict[str, Any]:
    """FLOPs of one batch-1 forward pass, by operator, and per second of audio."""
    _register_cpu_flash_attention()
    model = build_model(size=size)
    segment = torch.zeros(1, 2, int(SEGMENT_S * 44_100))
    segment.normal_(generator=torch.Generator().manual_seed(0))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), flop_counter.FlopCounterMode(display=False) as counter:
            model(segment)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    total = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    stride_s = (1 - overlap) * SEGMENT_S
    return {
        "model": size,
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_segment": total,
        "flops_by_op": by_op,
        "segment_s": SEGMENT_S,
        "overlap": overlap,
        "stride_s": stride_s,
        "flops_per_audio_s": total / stride_s,
        "counter": "torch.utils.flop_counter, MHA fast path off, CPU flash attention added",
        "torch": torch.__version__,
    }

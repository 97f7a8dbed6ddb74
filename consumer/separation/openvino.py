"""HTDemucs' network run by OpenVINO on a CPU (``STEM_CPU_RUNTIME=openvino``).

The whole model does not convert: its spectrogram is complex (``torch.stft``,
``view_as_complex``, ``istft``), which OpenVINO's converter and ``torch.onnx.export``
refuse. So the model is cut in three, exactly where ``HTDemucs.forward`` (Demucs 4.1.0)
changes domain: the STFT and the CaC reshaping stay in torch, the real-valued network in
between (:class:`Network`: the encoders, the cross-transformer, the decoders) is compiled
by OpenVINO once at start-up, and the complex re-assembly and the iSTFT run in torch again
(:func:`split_forward`). ``split_forward`` with ``Network`` run by torch is the model
itself, bit for bit (tested).

``openvino`` is an optional dependency (the ``openvino`` extra); it is imported only when
the runtime is asked for, and its absence is a :class:`~consumer.errors.ModelLoadError`
at start-up that says how to install it. Speed and SNR against fp32 eager PyTorch:
``python -m bench cpu-path`` (bench/README.md).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs

from consumer.errors import ModelLoadError
from consumer.separation.loading import Precision

__all__ = ["Network", "NetworkFn", "compile_network", "require_openvino", "split_forward"]

_log = logging.getLogger(__name__)

NetworkFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(cac_spectrogram [B, 2C, Fr, T], waveform [B, C, L])`` → ``(stems' spectrograms
[B, S, 2C, Fr, T], stems' waveforms [B, S, C, L])``."""

# torch.export traces one batch size unless told otherwise; this bounds the dynamic one.
_MAX_EXPORT_BATCH = 256
_INSTALL_HINT = "pip install 'stem-fleet[openvino]'"


def require_openvino() -> ModuleType:
    """The ``openvino`` package, or a ``ModelLoadError`` that says how to install it."""
    try:
        return importlib.import_module("openvino")
    except ImportError as exc:
        raise ModelLoadError(
            f"STEM_CPU_RUNTIME=openvino needs the openvino package, which is not installed "
            f"({exc}); install the extra ({_INSTALL_HINT}) or set STEM_CPU_RUNTIME=torch"
        ) from exc


class Network(torch.nn.Module):
    """The real-valued middle of ``HTDemucs.forward`` (Demucs 4.1.0), as a module that
    ``torch.export`` can trace: see :data:`NetworkFn` for the shapes (``L`` is the
    model's training length)."""

    def __init__(self, model: HTDemucs) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        B, _, Fq, T = x.shape
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - meant) / (1e-5 + stdt)
        saved: list[torch.Tensor] = []
        saved_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            x, xt = m.crosstransformer(x, xt)
        for idx, decode in enumerate(m.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        S = len(m.sources)
        x = x.view(B, S, -1, Fq, T) * std[:, None] + mean[:, None]
        xt = xt.view(B, S, -1, mix.shape[-1]) * stdt[:, None] + meant[:, None]
        return x, xt


def split_forward(model: HTDemucs, network: NetworkFn, mix: torch.Tensor) -> torch.Tensor:
    """``model(mix)`` (eval mode, Demucs 4.1.0) with its network replaced by ``network``."""
    length = mix.shape[-1]
    training_length = int(model.segment * model.samplerate)
    if length < training_length:
        mix = F.pad(mix, (0, training_length - length))
    z = model._spec(mix)
    x, xt = network(model._magnitude(z), mix)
    x = model._ispec(model._mask(z, x), training_length)
    out: torch.Tensor = (xt + x)[..., :length]
    return out


def compile_network(model: HTDemucs, *, precision: Precision, threads: int) -> NetworkFn:
    """The model's :class:`Network` exported (``torch.export``, any batch size), converted
    and compiled by OpenVINO for this CPU with ``threads`` threads. ``precision`` bf16 sets
    OpenVINO's inference precision hint to bf16 (OpenVINO runs f32 where the CPU has no
    bf16 instructions); fp32 keeps f32. Failures are ``ModelLoadError``."""
    if precision == "fp16":
        raise ValueError("cpu_runtime openvino runs fp32 or bf16, not fp16")
    ov = require_openvino()
    started = time.perf_counter()
    length = int(model.segment * model.samplerate)
    # A batch of two in the example: with one, torch.export specialises the batch to 1.
    mix = torch.zeros(2, model.audio_channels, length)
    with torch.no_grad():
        spec = model._magnitude(model._spec(mix))
    batch = torch.export.Dim("batch", min=1, max=_MAX_EXPORT_BATCH)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # plain ops, not the fused MHA kernel
    try:
        exported = torch.export.export(
            Network(model).eval(), (spec, mix), dynamic_shapes=({0: batch}, {0: batch})
        )
        compiled: Any = ov.Core().compile_model(
            ov.convert_model(exported),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "INFERENCE_NUM_THREADS": threads,
            },
        )
    except Exception as exc:  # torch.export's and OpenVINO's errors have no common base
        raise ModelLoadError(f"OpenVINO could not compile the model's network: {exc}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    runs = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if precision == "bf16" and "bf16" not in runs:
        _log.warning(
            "STEM_PRECISION=bf16: OpenVINO runs the network in f32, this CPU has no bf16",
            extra={"precision": runs},
        )
    _log.info(
        "model network compiled by OpenVINO",
        extra={
            "openvinoVersion": ov.get_version(),
            "precision": runs,
            "threads": threads,
            "compileSeconds": round(time.perf_counter() - started, 1),
        },
    )

    def network(spec: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = compiled([spec.numpy(), mix.numpy()])
        return torch.from_numpy(result[0].copy()), torch.from_numpy(result[1].copy())

    return network

"""The batched, streamed rewrite of ``apply_model`` for one HTDemucs (``shifts=0``).

It does what ``apply_model(split=True)`` does — the same chunk offsets, the same context
padding of each chunk (``TensorChunk.padded``), the same triangular overlap-add weights,
accumulated in the same order — but runs ``batch_size`` chunks per forward pass and hands
back each stretch of the output as soon as no later chunk can touch it. Memory is bounded
by the batch, not the track. Its parity with Demucs' path is tested.

On CUDA: pinned host memory and non-blocking copies, optional bf16/fp16 autocast, and the
batch sized at warm-up from the memory one chunk takes. Out of memory mid-job, the batch is
halved (and remembered, so the next job starts at a size that fitted) before giving up.
On a CPU: optional bf16 autocast, or the model's network run by another runtime
(``network``, e.g. OpenVINO: :mod:`.openvino`) between torch's STFT and iSTFT.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs
from demucs.utils import center_trim

from consumer.separation.base import CancelledFn, ProgressFn, SeparationCancelled, Stems
from consumer.separation.loading import Precision, normalisation, out_of_memory
from consumer.separation.openvino import NetworkFn, split_forward

__all__ = ["BatchedHTDemucs"]

_log = logging.getLogger(__name__)
_MAX_BATCH = 32


class BatchedHTDemucs:
    """One HTDemucs on one device, ``batch_size`` segments per forward pass."""

    def __init__(
        self,
        model: HTDemucs,
        *,
        device: torch.device,
        segment_length: int,
        overlap: float,
        batch_size: int,
        precision: Precision,
        network: NetworkFn | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.segment_length = segment_length
        self.overlap = overlap
        self.batch_size = batch_size
        self.precision = precision
        # The model's network compiled by another runtime (STEM_CPU_RUNTIME), or torch's.
        self.network = network

    def blocks(
        self,
        wav: torch.Tensor,
        progress: ProgressFn | None,
        cancelled: CancelledFn | None,
    ) -> Iterator[tuple[int, Stems]]:
        """``(start_frame, [sources, channels, n])`` blocks in time order tiling the track."""
        segment_length = self.segment_length
        length = wav.shape[-1]
        stride = int((1 - self.overlap) * segment_length)
        offsets = list(range(0, length, stride))
        # Applied chunk by chunk (in forward): a normalised copy of a long track would
        # double its memory.
        mean, std = normalisation(wav)
        # apply_model's transition weights (transition_power 1): a triangle, max 1.
        weight = torch.cat(
            [
                torch.arange(1, segment_length // 2 + 1),
                torch.arange(segment_length - segment_length // 2, 0, -1),
            ]
        ).float()
        weight = weight / weight.max()
        sources, channels = len(self.model.sources), wav.shape[0]
        window = segment_length + self.batch_size * stride
        out = torch.zeros(sources, channels, window)
        sum_weight = torch.zeros(window)
        flushed = 0  # frames before this are final and handed out
        index = 0
        while index < len(offsets):
            if cancelled is not None and cancelled():
                raise SeparationCancelled("separation cancelled")
            group = offsets[index : index + self.batch_size]
            try:
                results = self.forward(wav, group, mean, std)
            except torch.OutOfMemoryError as exc:
                if self.batch_size == 1:
                    raise out_of_memory(self.device, length, exc) from exc
                # Back off and remember: the next job starts at the size that fitted.
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                _log.warning(
                    "out of memory: segment batch reduced", extra={"batch": self.batch_size}
                )
                continue
            for offset, chunk_out in zip(group, results, strict=True):
                chunk_length = chunk_out.shape[-1]
                at = offset - flushed
                out[..., at : at + chunk_length] += weight[:chunk_length] * chunk_out
                sum_weight[at : at + chunk_length] += weight[:chunk_length]
            index += len(group)
            if progress is not None:
                progress(index / len(offsets))
            final = offsets[index] if index < len(offsets) else length
            n = final - flushed
            block = out[..., :n] / sum_weight[:n]
            yield flushed, (block * std + mean).numpy()
            # Slide the window: what is not final yet moves to the front. A smaller batch
            # after a back-off needs less room than the window has.
            out = torch.cat([out[..., n:], torch.zeros(sources, channels, n)], dim=-1)
            sum_weight = torch.cat([sum_weight[n:], torch.zeros(n)])
            flushed = final

    def forward(
        self,
        wav: torch.Tensor,
        offsets: list[int],
        mean: torch.Tensor | float = 0.0,
        std: torch.Tensor | float = 1.0,
    ) -> list[torch.Tensor]:
        """One forward pass over the chunks at ``offsets``; each result trimmed back to its
        chunk, on the host (``[sources, channels, chunk_length]``).

        Each chunk is what ``TensorChunk(normalised, offset, L).padded(L)`` gives: centred
        in ``L`` samples of context, zero-padded past the ends of the track — normalised
        here, chunk by chunk, before the padding (so the padding stays zero).
        """
        segment_length = self.segment_length
        length = wav.shape[-1]
        inputs, lengths = [], []
        for offset in offsets:
            chunk_length = min(segment_length, length - offset)
            start = offset - (segment_length - chunk_length) // 2
            end = start + segment_length
            inside = (wav[..., max(0, start) : min(length, end)] - mean) / std
            inputs.append(F.pad(inside, (max(0, -start), max(0, end - length))))
            lengths.append(chunk_length)
        batch = torch.stack(inputs)
        del inputs
        cuda = self.device.type == "cuda"
        if cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        if self.network is not None:
            # The runtime was compiled for its precision; no autocast around it.
            with torch.inference_mode():
                result = split_forward(self.model, self.network, batch)
        else:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None),
            ):
                result = self.model(batch)
        host = result.float().to("cpu")
        return [center_trim(host[i], n) for i, n in enumerate(lengths)]

    def warm_up(self, *, auto_batch: bool) -> None:
        """Run the model once so the first job does not pay for kernel selection; with
        ``auto_batch`` on CUDA, size the segment batch from the memory one chunk takes."""
        silence = torch.zeros(self.model.audio_channels, self.segment_length)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        self.forward(silence, [0])
        if cuda and auto_batch:
            per_chunk = max(torch.cuda.max_memory_allocated(self.device) - base, 1)
            free, _ = torch.cuda.mem_get_info(self.device)
            # Half the free memory, so a second process or fragmentation still fits.
            self.batch_size = int(max(1, min(_MAX_BATCH, (free // 2) // per_chunk)))
            _log.info(
                "segment batch sized to the device",
                extra={"batch": self.batch_size, "perChunkBytes": per_chunk, "freeBytes": free},
            )
            self.forward(silence, [0] * self.batch_size)

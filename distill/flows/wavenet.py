"""WaveNet: a causal conditioner over the time axis of ``(..., C, T)`` sequences.

Behind the conditioner interface of `MADE` (``params``, ``solve``, ``event_dims``), so the
elementwise transforms and the MAF/IAF mechanism of `distill.flows.autoregressive` act over time
unchanged: a MAF over time (``theta_t = WaveNet(x_<t)``) evaluates a sequence's density in one
parallel pass and samples it step by step; an IAF over time (``theta_t = WaveNet(u_<t)``)
samples a whole sequence, with its density, in one parallel pass (Parallel WaveNet's student).

The network (van den Oord et al., 2016): the input shifted one step right (so step t sees only
steps < t), a 1x1 convolution to ``residual_channels``, then ``num_layers`` blocks of a dilated
causal convolution (kernel ``kernel_size``, dilation ``2 ** (i % dilation_cycle)``), a gated
unit ``tanh(a) * sigmoid(b)``, a 1x1 convolution to a residual (added to the block's input) and
a skip output (summed over blocks); the head maps ``relu(skips)`` through two 1x1 convolutions
to ``P`` parameters per channel and step. Optional conditioning enters every gate: a global
vector ``(..., G)`` or a local sequence ``(..., L, T / hop)`` upsampled to T by repetition.

`WaveNet.solve` is the sequential direction with the "fast WaveNet" queues (Paine et al.,
2016): each block keeps its past inputs, so a step costs a few ``(B, R)`` products per block,
never a pass over the sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WaveNet(nn.Module):
    """Causal dilated convolutions over time with gated units, residual and skip connections.

    Maps inputs ``(..., C, T)`` (and an optional context) to parameters ``(..., C, T, P)``
    where ``params[..., c, t, :]`` depends only on the inputs at steps ``< t`` (all channels)
    and on the context. Receptive field: ``receptive_field`` steps before t.

    Args:
        channels: C.
        out_multiplier: P, the parameters per channel and step.
        num_layers: the dilated blocks.
        residual_channels, skip_channels: widths of the residual stream and the skips.
        kernel_size: taps of each dilated convolution (>= 2).
        dilation_cycle: dilations ``1, 2, ..., 2 ** (dilation_cycle - 1)``, repeated.
        global_features: G, for a global context ``(..., G)``; or
        local_features: L, for a local context ``(..., L, T // hop_length)`` (one of the two).
        hop_length: steps per frame of the local context.
        context_hidden: width of the conditioning network, a per-frame MLP (two tanh layers)
            from the context to every block's gate terms; None: one linear map (the gates
            then see the context only linearly, which makes a frequency from a pitch value
            slow to learn).

    The head's last layer starts near zero, so a flow layer built on it starts near the
    identity.
    """

    event_dims = 2

    def __init__(
        self,
        channels: int = 1,
        out_multiplier: int = 2,
        num_layers: int = 10,
        residual_channels: int = 32,
        skip_channels: int = 32,
        kernel_size: int = 2,
        dilation_cycle: int = 10,
        global_features: int | None = None,
        local_features: int | None = None,
        hop_length: int | None = None,
        context_hidden: int | None = None,
    ):
        super().__init__()
        for name, value in (
            ("channels", channels),
            ("num_layers", num_layers),
            ("residual_channels", residual_channels),
            ("skip_channels", skip_channels),
            ("dilation_cycle", dilation_cycle),
        ):
            if value < 1:
                raise ValueError(f"WaveNet needs {name} >= 1, got {value}")
        if kernel_size < 2:
            raise ValueError(f"WaveNet needs kernel_size >= 2, got {kernel_size}")
        if global_features and local_features:
            raise ValueError(
                "a WaveNet takes one context: set global_features (a vector per sequence) or "
                "local_features (a sequence of frames), not both"
            )
        if local_features and (hop_length is None or hop_length < 1):
            raise ValueError(
                f"local_features={local_features} needs hop_length >= 1 (the steps per frame "
                f"of the local context), got {hop_length}"
            )
        unread = self.unread_settings(
            {
                "hop_length": hop_length,
                "context_hidden": context_hidden,
                "global_features": global_features,
                "local_features": local_features,
            }
        )
        if "hop_length" in unread:
            raise ValueError(
                f"hop_length={hop_length} is the steps per frame of a local context, but this "
                "WaveNet has none (local_features unset): remove hop_length"
            )
        if "context_hidden" in unread:
            raise ValueError(
                f"context_hidden={context_hidden} sizes the network that reads a context, but "
                "this flow has none (its data is unconditional): set context_hidden=null (in a "
                "config, under the flow), or condition the data (e.g. data.conditioning=pitch)"
            )
        self.channels = channels
        self.out_multiplier = out_multiplier
        self.residual_channels = residual_channels
        self.kernel_size = kernel_size
        self.global_features = global_features or None
        self.local_features = local_features or None
        self.hop_length = hop_length
        self.dilations = [2 ** (i % dilation_cycle) for i in range(num_layers)]
        self.receptive_field = 1 + (kernel_size - 1) * sum(self.dilations)

        gate = 2 * residual_channels
        self.front = nn.Conv1d(channels, residual_channels, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(residual_channels, gate, kernel_size, dilation=d) for d in self.dilations
        )
        # one 1x1 convolution per block to [residual, skip]; the last block's residual is unused
        self.outputs = nn.ModuleList(
            nn.Conv1d(residual_channels, residual_channels + skip_channels, 1)
            for _ in self.dilations
        )
        # the context's term of every block's gate, all blocks at once, per frame
        context_features = self.global_features or self.local_features
        self.context: nn.Module | None = None
        if context_features and context_hidden:
            self.context = nn.Sequential(
                nn.Conv1d(context_features, context_hidden, 1),
                nn.Tanh(),
                nn.Conv1d(context_hidden, context_hidden, 1),
                nn.Tanh(),
                nn.Conv1d(context_hidden, gate * num_layers, 1, bias=False),
            )
        elif context_features:
            self.context = nn.Conv1d(context_features, gate * num_layers, 1, bias=False)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(skip_channels, skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(skip_channels, channels * out_multiplier, 1),
        )
        last = self.head[-1]
        with torch.no_grad():
            last.weight.mul_(1e-2)
            last.bias.zero_()

    @staticmethod
    def unread_settings(settings: Mapping[str, Any]) -> list[str]:
        """The conditioning settings among ``settings`` (a WaveNet's keyword arguments) that
        it would not read: ``hop_length`` without a local context, ``context_hidden`` without
        any context. `WaveNet` refuses them."""
        context = settings.get("global_features") or settings.get("local_features")
        unread = []
        if settings.get("hop_length") is not None and not settings.get("local_features"):
            unread.append("hop_length")
        if settings.get("context_hidden") and not context:
            unread.append("context_hidden")
        return unread

    @property
    def context_event_dims(self) -> int:
        """Trailing dims of the context that are not batch: 1 (global) or 2 (local)."""
        return 2 if self.local_features else 1

    def extra_repr(self) -> str:
        return f"receptive_field={self.receptive_field}"

    # ----------------------------------------------------------------------------- shapes

    def _flatten(self, inputs: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Inputs ``(..., C, T)`` and context with broadcast batch shapes -> ``(B, C, T)`` and
        the context's gate terms at frame rate ``(B, layers * 2R, frames)`` (frames 1 for a
        global context), or None."""
        if inputs.dim() < 2 or inputs.shape[-2] != self.channels:
            raise ValueError(
                f"a WaveNet flow over {self.channels} channel(s) takes sequences of shape "
                f"(..., {self.channels}, T), got {tuple(inputs.shape)}"
            )
        if self.context is None:
            return inputs.reshape(-1, *inputs.shape[-2:]), None
        context = self._check_context(context, inputs.shape[-1])
        dims = self.context_event_dims
        batch = torch.broadcast_shapes(inputs.shape[:-2], context.shape[:-dims])
        inputs = inputs.expand(*batch, *inputs.shape[-2:]).reshape(-1, *inputs.shape[-2:])
        context = context.expand(*batch, *context.shape[-dims:])
        context = context.reshape(-1, *context.shape[-dims:])
        if dims == 1:
            context = context[..., None]
        return inputs, self.context(context)

    def _check_context(self, context: Tensor | None, length: int) -> Tensor:
        if self.global_features:
            if context is None or context.dim() == 0 or context.shape[-1] != self.global_features:
                got = "none" if context is None else f"shape {tuple(context.shape)}"
                raise ValueError(
                    f"this flow is conditioned on a global context of {self.global_features} "
                    f"feature(s) but got {got}: pass context=<tensor of shape "
                    f"(..., {self.global_features})>"
                )
            return context
        # not divmod: torch.export traces // and % of a symbolic length (distill.export)
        frames, remainder = length // self.hop_length, length % self.hop_length
        if (
            context is None
            or context.dim() < 2
            or context.shape[-2] != self.local_features
            or context.shape[-1] != frames
            or remainder
        ):
            got = "none" if context is None else f"shape {tuple(context.shape)}"
            raise ValueError(
                f"this flow is conditioned on a local context of {self.local_features} "
                f"feature(s) per frame of {self.hop_length} steps; for sequences of {length} "
                f"steps pass context=<tensor of shape (..., {self.local_features}, "
                f"{length // self.hop_length})> (and a length that is a multiple of "
                f"{self.hop_length}); got {got}"
            )
        return context

    def _upsampled(self, gates: Tensor, length: int) -> Tensor:
        """Frame-rate gate terms ``(B, G, frames)`` -> step rate ``(B, G, T)`` (or ``(B, G, 1)``
        for a global context, broadcast over T)."""
        if self.hop_length is None:
            return gates
        return gates.repeat_interleave(self.hop_length, dim=-1)[..., :length]

    # ------------------------------------------------------------------ parallel direction

    def params(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Inputs ``(..., C, T)`` [+ context] -> parameters ``(..., C, T, P)``, step t reading
        the inputs of steps < t: one parallel pass.

        Two layouts of the same arithmetic (tested equal), chosen by whether autograd records
        the pass. Training: time-major, ``(B, T, channels)``, each convolution one matrix
        product over its taps side by side and the skips of all blocks one product (as in
        `solve`); oneDNN's weight gradients of ``Conv1d`` with few channels are slow, and a
        notes student's training step took 0.122-0.132 s this way against 0.143-0.158 s on
        two threads. Sampling and evaluation: ``Conv1d`` over ``(B, C, T)``, which drew one
        second of audio at batch 1 in 37-38 ms against the time-major 52 ms
        (experiments/results/notes_session10.md)."""
        batch_shape = inputs.shape[:-2]
        flat, gates = self._flatten(inputs, context)
        length = flat.shape[-1]
        if gates is not None:
            batch_shape = torch.broadcast_shapes(
                batch_shape, context.shape[: -self.context_event_dims]
            )
            gates = self._upsampled(gates, length)  # (B, blocks * 2R, T or 1)
        shifted = F.pad(flat, (1, -1))  # step t sees steps <= t - 1
        records = torch.is_grad_enabled() and (
            shifted.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if records:
            out = self._time_major(shifted.transpose(1, 2), gates).transpose(1, 2)
        else:
            out = self._channel_major(shifted, gates)
        out = out.view(-1, self.channels, self.out_multiplier, length).transpose(-1, -2)
        return out.reshape(*batch_shape, self.channels, length, self.out_multiplier)

    def _channel_major(self, shifted: Tensor, gates: Tensor | None) -> Tensor:
        """The pass over ``(B, C, T)`` with ``Conv1d``: ``(B, C * P, T)``."""
        if gates is not None:
            gates = gates.unflatten(1, (len(self.dilated), -1))
        hidden = self.front(shifted)
        skips = 0.0
        for index, (dilated, output) in enumerate(zip(self.dilated, self.outputs, strict=True)):
            padding = (self.kernel_size - 1) * dilated.dilation[0]
            gate = dilated(F.pad(hidden, (padding, 0)))
            if gates is not None:
                gate = gate + gates[:, index]
            residual, skip = output(self._gated(*gate.chunk(2, dim=1))).split(
                [self.residual_channels, output.out_channels - self.residual_channels], dim=1
            )
            hidden = hidden + residual
            skips = skips + skip
        return self.head(skips)

    def _time_major(self, steps: Tensor, gates: Tensor | None) -> Tensor:
        """The pass over ``(B, T, C)`` with matrix products: ``(B, T, C * P)``."""
        length, num_blocks, residual = steps.shape[1], len(self.dilated), self.residual_channels
        if gates is not None:
            gates = gates.transpose(1, 2).unflatten(2, (num_blocks, -1))  # (B, T|1, blocks, 2R)
        hidden = F.linear(steps, self.front.weight[..., 0], self.front.bias)
        units = []
        for index, (dilated, output) in enumerate(zip(self.dilated, self.outputs, strict=True)):
            # tap k reads step t - (kernel_size - 1 - k) * dilation; the last tap is step t
            taps = [
                F.pad(hidden, (0, 0, (self.kernel_size - 1 - k) * dilated.dilation[0], 0))
                for k in range(self.kernel_size - 1)
            ]
            taps = torch.cat([*(tap[:, :length] for tap in taps), hidden], dim=-1)
            weight = dilated.weight.transpose(1, 2).reshape(dilated.out_channels, -1)
            # the filter and gate halves as two products: each comes out contiguous, and tanh
            # and sigmoid over a strided half of one (B, T, 2R) product took twice as long
            filter_ = F.linear(taps, weight[:residual], dilated.bias[:residual])
            gate = F.linear(taps, weight[residual:], dilated.bias[residual:])
            if gates is not None:
                filter_ = filter_ + gates[:, :, index, :residual]
                gate = gate + gates[:, :, index, residual:]
            units.append(self._gated(filter_, gate))
            if index < num_blocks - 1:  # the last block's residual feeds nothing
                hidden = hidden + F.linear(
                    units[-1], output.weight[:residual, :, 0], output.bias[:residual]
                )
        skips = F.linear(torch.cat(units, dim=-1), *self._skip_projection())
        head_1, head_2 = self.head[1], self.head[3]
        out = F.linear(torch.relu(skips), head_1.weight[..., 0], head_1.bias)
        return F.linear(torch.relu(out), head_2.weight[..., 0], head_2.bias)

    def _skip_projection(self) -> tuple[Tensor, Tensor]:
        """Every block's skip output as one product over their gated units side by side:
        weight ``(S, blocks * R)`` and bias ``(S,)`` (the skips' sum)."""
        residual = self.residual_channels
        weight = torch.cat([output.weight[residual:, :, 0] for output in self.outputs], dim=1)
        return weight, sum(output.bias[residual:] for output in self.outputs)

    @staticmethod
    def _gated(filter_: Tensor, gate: Tensor) -> Tensor:
        """The gated unit ``tanh(filter) * sigmoid(gate)``."""
        return torch.tanh(filter_) * torch.sigmoid(gate)

    # ---------------------------------------------------------------- sequential direction

    def solve(
        self,
        given: Tensor,
        step: Callable[[Tensor, Tensor], Tensor],
        context: Tensor | None = None,
    ) -> Tensor:
        """The sequential direction of an autoregressive map over time built on this network.

        Finds ``y`` ``(..., C, T)`` with ``y_t = step(given_t, params_t(y_<t))`` for every
        step t, ``given_t`` ``(..., C)`` and ``params_t`` ``(..., C, P)``, and returns it.
        ``step`` is called once per time step, in order.

        Each block keeps the inputs of its last ``(kernel_size - 1) * dilation`` steps (the
        fast-WaveNet queues), so step t costs one ``(B, C)`` input product and, per block,
        ``kernel_size`` ``(B, R)`` products for the dilated convolution and one for the
        residual, then one product for all the skips and two for the head: O(layers),
        independent of T, about 8 small operations a block (the loop is bound by their
        dispatch, not their arithmetic: experiments/bench_wavenet.py). The result equals the
        parallel ``params`` at the solution (tested). Differentiable.
        """
        batch_shape = given.shape[:-2]
        flat, gates = self._flatten(given, context)
        batch, length = flat.shape[0], flat.shape[-1]
        num_blocks, residual = len(self.dilated), self.residual_channels
        # each block's gate bias, with the context's term folded in: (frames, blocks, B, 2R),
        # step t reading frame t // hop (a single frame without a local context)
        biases = torch.stack([conv.bias for conv in self.dilated])[None, :, None, :]
        if gates is not None:
            batch_shape = torch.broadcast_shapes(
                batch_shape, context.shape[: -self.context_event_dims]
            )
            biases = biases + gates.unflatten(1, (num_blocks, -1)).permute(3, 1, 0, 2)
        biases = biases.expand(-1, -1, batch, -1)
        hop = self.hop_length or length  # frame 0 throughout without a local context
        given_steps = flat.permute(2, 0, 1)  # (T, B, C)

        # The weights as (in, out) matrices, taken once. Residuals are added block by block;
        # skips are one product at the end, over the gated units of every block side by side.
        front_w = self.front.weight[..., 0].T
        taps_w = [[conv.weight[..., k].T for k in range(self.kernel_size)] for conv in self.dilated]
        residual_w = [output.weight[:residual, :, 0].T for output in self.outputs]
        residual_b = [output.bias[:residual] for output in self.outputs]
        skip_w, skip_b = self._skip_projection()
        skip_w = skip_w.T
        head_1, head_2 = self.head[1], self.head[3]
        head_w1, head_w2 = head_1.weight[..., 0].T, head_2.weight[..., 0].T
        # tap k reads step t - (kernel_size - 1 - k) * dilation; the last tap is step t
        lags = [
            [(self.kernel_size - 1 - k) * d for k in range(self.kernel_size - 1)]
            for d in self.dilations
        ]
        windows = [(self.kernel_size - 1) * d for d in self.dilations]
        history: list[list[Tensor | None]] = [[] for _ in self.dilated]
        zeros = flat.new_zeros(batch, residual)
        previous = flat.new_zeros(batch, self.channels)  # y_{t-1}; zero before the start
        last = num_blocks - 1
        solution = []
        for t in range(length):
            hidden = torch.addmm(self.front.bias, previous, front_w)
            bias = biases[t // hop]
            gated_units = []
            for index in range(num_blocks):
                past, taps = history[index], taps_w[index]
                gate = torch.addmm(bias[index], hidden, taps[-1])
                for k, lag in enumerate(lags[index]):
                    gate = torch.addmm(gate, past[t - lag] if t >= lag else zeros, taps[k])
                past.append(hidden)
                if t >= windows[index]:
                    past[t - windows[index]] = None  # out of the receptive field: let it go
                gated = self._gated(*gate.chunk(2, dim=1))
                gated_units.append(gated)
                if index < last:  # the last block's residual feeds nothing
                    hidden = torch.addmm(hidden, gated, residual_w[index]) + residual_b[index]
            skips = torch.addmm(skip_b, torch.cat(gated_units, dim=1), skip_w)
            params = torch.addmm(head_1.bias, torch.relu(skips), head_w1)
            params = torch.addmm(head_2.bias, torch.relu(params), head_w2)
            params = params.view(batch, self.channels, self.out_multiplier)
            y_t = step(
                given_steps[t].reshape(*batch_shape, self.channels),
                params.reshape(*batch_shape, self.channels, self.out_multiplier),
            ).reshape(batch, self.channels)
            solution.append(y_t)
            previous = y_t
        return torch.stack(solution, dim=-1).reshape(*batch_shape, self.channels, length)

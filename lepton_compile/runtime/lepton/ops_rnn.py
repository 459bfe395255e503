"""Recurrent ops (LSTM, GRU, RNN), unrolled over the static sequence length.

The input projection of every time step is one matmul; each step then does the recurrent
matmul and the gate math. Variable sequence_lens (padding inside the batch) is not
supported: all lengths must equal the sequence length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.registry import op

Act = Callable[[torch.Tensor], torch.Tensor]

# name -> (number of parameters, defaults, builder)
_ACTS: dict[str, tuple[int, tuple[float, ...], Callable[..., Act]]] = {
    "Sigmoid": (0, (), lambda: torch.sigmoid),
    "Tanh": (0, (), lambda: torch.tanh),
    "Relu": (0, (), lambda: torch.relu),
    "Softsign": (0, (), lambda: F.softsign),
    "Softplus": (0, (), lambda: F.softplus),
    "Affine": (2, (1.0, 0.0), lambda a, b: lambda x: a * x + b),
    "LeakyRelu": (1, (0.01,), lambda a: lambda x: F.leaky_relu(x, a)),
    "ThresholdedRelu": (1, (1.0,), lambda a: lambda x: torch.where(x > a, x, 0.0 * x)),
    "ScaledTanh": (2, (1.0, 1.0), lambda a, b: lambda x: a * torch.tanh(b * x)),
    "HardSigmoid": (2, (0.2, 0.5), lambda a, b: lambda x: torch.clamp(a * x + b, 0.0, 1.0)),
    "Elu": (1, (1.0,), lambda a: lambda x: F.elu(x, a)),
}


def _activations(ctx: NodeCtx, defaults: list[str], num_dir: int) -> list[Act]:
    names = ctx.attr("activations") or defaults * num_dir
    if len(names) == len(defaults):
        names = list(names) * num_dir
    alphas = list(ctx.attr("activation_alpha") or [])
    betas = list(ctx.attr("activation_beta") or [])
    acts = []
    for name in names:
        key = next((k for k in _ACTS if k.lower() == name.lower()), None)
        if key is None:
            raise ctx.unsupported(f"activation {name!r}")
        nparams, dflt, build = _ACTS[key]
        params = list(dflt)
        if nparams >= 1 and alphas:
            params[0] = alphas.pop(0)
        if nparams >= 2 and betas:
            params[1] = betas.pop(0)
        acts.append(build(*params))
    return acts


class _Common:
    def __init__(self, ctx: NodeCtx, gates: int):
        self.ctx = ctx
        x = ctx.input(0)
        self.layout = int(ctx.attr("layout", 0))
        if self.layout:
            x = x.transpose(0, 1)
        self.x = x  # [seq, batch, input]
        self.w, self.r = ctx.input(1), ctx.input(2)
        self.num_dir = self.w.shape[0]
        self.hidden = self.r.shape[-1]
        direction = ctx.attr("direction", "forward")
        expected = 2 if direction == "bidirectional" else 1
        if direction not in ("forward", "reverse", "bidirectional") or self.num_dir != expected:
            raise ctx.unsupported(f"direction={direction!r} with {self.num_dir} direction(s)")
        self.direction = direction
        seq, batch = x.shape[0], x.shape[1]
        if ctx.has(4):
            lens = ctx.ints(4, "sequence_lens")
            if any(n != seq for n in lens):
                raise ctx.unsupported("sequence_lens shorter than the sequence (padded batches)")
        self.clip = ctx.attr("clip")
        b = ctx.input(3)
        if b is None:
            b = torch.zeros((self.num_dir, 2 * gates * self.hidden), dtype=x.dtype, device=x.device)
        self.wb, self.rb = b[:, : gates * self.hidden], b[:, gates * self.hidden :]
        self.seq, self.batch = seq, batch

    def initial(self, i: int) -> torch.Tensor:
        t = self.ctx.input(i)
        if t is None:
            return torch.zeros(
                (self.num_dir, self.batch, self.hidden), dtype=self.x.dtype, device=self.x.device
            )
        return t.transpose(0, 1) if self.layout else t

    def gate(self, t: torch.Tensor) -> torch.Tensor:
        if self.clip is not None:
            return torch.clamp(t, -self.clip, self.clip)
        return t

    def projections(self, d: int) -> list[torch.Tensor]:
        """x_t @ W^T + Wb for every step, in the order this direction visits them."""
        proj = torch.matmul(self.x, self.w[d].t()) + self.wb[d]
        steps = list(proj.unbind(0))
        if self.direction == "reverse" or d == 1:
            steps.reverse()
        return steps

    def outputs(
        self, ys: list[list[torch.Tensor]], finals: list[list[torch.Tensor]]
    ) -> tuple[torch.Tensor, ...]:
        per_dir = []
        for d, steps in enumerate(ys):
            if self.direction == "reverse" or d == 1:
                steps = steps[::-1]
            per_dir.append(torch.stack(steps, 0))  # [seq, batch, hidden]
        y = torch.stack(per_dir, 1)  # [seq, num_dir, batch, hidden]
        states = [torch.stack(list(f), 0) for f in finals]  # [num_dir, batch, hidden]
        if self.layout:
            y = y.permute(2, 0, 1, 3)
            states = [s.transpose(0, 1) for s in states]
        return (y, *states)


@op("LSTM")
def lstm(ctx: NodeCtx):
    c = _Common(ctx, 4)
    acts = _activations(ctx, ["Sigmoid", "Tanh", "Tanh"], c.num_dir)
    p = ctx.input(7)
    h0, c0 = c.initial(5), c.initial(6)
    input_forget = bool(ctx.attr("input_forget", 0))
    ys, hs, cs = [], [], []
    H = c.hidden
    for d in range(c.num_dir):
        f, g, h = acts[3 * d : 3 * d + 3]
        r_t = c.r[d].t()
        rb = c.rb[d]
        pi = po = pf = None
        if p is not None:
            pi, po, pf = p[d, :H], p[d, H : 2 * H], p[d, 2 * H :]
        h_t, c_t = h0[d], c0[d]
        out = []
        for xp in c.projections(d):
            gates = xp + torch.matmul(h_t, r_t) + rb
            gi, go, gf, gc = gates.split(H, dim=-1)
            if pi is not None:
                gi = gi + pi * c_t
                gf = gf + pf * c_t
            ft = f(c.gate(gf))
            it = 1 - ft if input_forget else f(c.gate(gi))
            ct = g(c.gate(gc))
            c_t = ft * c_t + it * ct
            if po is not None:
                go = go + po * c_t
            ot = f(c.gate(go))
            h_t = ot * h(c_t)
            out.append(h_t)
        ys.append(out)
        hs.append(h_t)
        cs.append(c_t)
    return c.outputs(ys, [hs, cs])


@op("GRU")
def gru(ctx: NodeCtx):
    c = _Common(ctx, 3)
    acts = _activations(ctx, ["Sigmoid", "Tanh"], c.num_dir)
    h0 = c.initial(5)
    lbr = bool(ctx.attr("linear_before_reset", 0))
    H = c.hidden
    ys, hs = [], []
    for d in range(c.num_dir):
        f, g = acts[2 * d : 2 * d + 2]
        r = c.r[d]
        r_zr, r_h = r[: 2 * H].t(), r[2 * H :].t()
        rb_zr, rb_h = c.rb[d][: 2 * H], c.rb[d][2 * H :]
        h_t = h0[d]
        out = []
        for xp in c.projections(d):
            x_zr, x_h = xp[..., : 2 * H], xp[..., 2 * H :]
            zr = x_zr + torch.matmul(h_t, r_zr) + rb_zr
            z, rr = f(c.gate(zr[..., :H])), f(c.gate(zr[..., H:]))
            if lbr:
                hh = x_h + rr * (torch.matmul(h_t, r_h) + rb_h)
            else:
                hh = x_h + torch.matmul(rr * h_t, r_h) + rb_h
            hh = g(c.gate(hh))
            h_t = (1 - z) * hh + z * h_t
            out.append(h_t)
        ys.append(out)
        hs.append(h_t)
    return c.outputs(ys, [hs])


@op("RNN")
def rnn(ctx: NodeCtx):
    c = _Common(ctx, 1)
    acts = _activations(ctx, ["Tanh"], c.num_dir)
    h0 = c.initial(5)
    ys, hs = [], []
    for d in range(c.num_dir):
        f = acts[d]
        r_t = c.r[d].t()
        h_t = h0[d]
        out = []
        for xp in c.projections(d):
            h_t = f(c.gate(xp + torch.matmul(h_t, r_t) + c.rb[d]))
            out.append(h_t)
        ys.append(out)
        hs.append(h_t)
    return c.outputs(ys, [hs])

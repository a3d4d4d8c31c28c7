"""Weight gradients of a recurrence in one matrix product per weight (as cuDNN's RNN backward forms them).

A recurrent decoder applies the same matrix W at every step, y_t = x_t W^T. Plain autograd then forms
∂L/∂W = Σ_t g_t^T x_t as one small product per step plus one accumulation into a full-size gradient per step;
with a batch of 32 to 64 rows those products run far below the machine's matrix throughput. Here the backward
pass of each step only records (x_t, g_t) and returns ∂L/∂x_t = g_t W; once every step's backward has run,
∂L/∂W is one product over all steps, cat(g)^T cat(x). The result equals autograd's up to the order of the
floating-point sums (tested against it).

Usage::

    W_h = RecurrentWeight(torch.cat([W_q, W_hh]))   # once per batch, inside the autograd graph
    for t in range(T):
        from_h = W_h(h)                               # (b, out): x @ W^T, b may shrink from step to step
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch.autograd import Function

__all__ = ["RecurrentWeight"]


class _Gather(Function):
    """Identity on W whose backward adds the recorded steps' cat(g)^T cat(x) to W's gradient. Every step's
    product takes W from this node, so autograd runs this backward only after all of theirs."""

    @staticmethod
    def forward(ctx, weight, owner):
        ctx.owner = owner
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        xs, gs = ctx.owner.inputs, ctx.owner.grads
        if not gs:
            return grad, None
        dw = torch.cat(gs).t().mm(torch.cat(xs))
        ctx.owner.inputs, ctx.owner.grads = [], []
        return (dw if grad is None else grad + dw.to(grad.dtype)), None


class _Product(Function):
    """y = x W^T whose backward returns only ∂L/∂x and records (x, g) for :class:`_Gather`."""

    @staticmethod
    def forward(ctx, x, weight, owner):
        ctx.owner, ctx.x_dtype = owner, x.dtype
        x = x.to(weight.dtype)
        ctx.save_for_backward(x, weight)
        return x.mm(weight.t())

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ctx.owner.inputs.append(x)
        ctx.owner.grads.append(grad.to(x.dtype))
        dx = grad.to(weight.dtype).mm(weight).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return dx, None, None


class RecurrentWeight:
    """A matrix W applied at every step of a recurrence, ``self(x) = x @ W.T``, whose gradient is formed in one
    product after the backward pass (see the module docstring). Without gradients (decoding) it is ``F.linear``.

    Args:
        weight: (out, in) W; may be a function of parameters (a ``torch.cat`` of several, a cast to bf16):
            the gradient flows back through it once.
        defer: form the gradient in one product (False: plain autograd, one product per step; what
            ``torch.compile`` traces, since the deferred backward records into this object, a side effect that
            dynamo cannot put in a graph).
    """

    def __init__(self, weight: torch.Tensor, defer: bool = True):
        self.inputs: List[torch.Tensor] = []
        self.grads: List[torch.Tensor] = []
        self.deferred = defer and torch.is_grad_enabled() and weight.requires_grad
        self.weight = _Gather.apply(weight, self) if self.deferred else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(b, in) -> (b, out) in W's dtype."""
        if self.deferred:
            return _Product.apply(x, self.weight, self)
        return F.linear(x.to(self.weight.dtype), self.weight)  # with gradients when not deferred

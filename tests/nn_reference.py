"""Brute-force network Fishers for the tests, independent of fisherkl's engine.

Per-example Jacobians are taken one output entry at a time with plain ``torch.autograd.grad`` on each
example alone (slow, but it works for any model, HuggingFace included), head Fishers are written out by
hand, and positions and masks are summed explicitly:

    F = (1/N) Σₙ Σₜ maskₙₜ Jₙₜᵀ I_head(outₙₜ) Jₙₜ        (positions="sum"; "mean" divides by Σ mask)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Outputs = Callable[[nn.Module, int], Tensor]  # (net, example index) -> outputs of that example [*P, C]


def head_fisher(head: str, f: Tensor, sigma: float = 1.0) -> Tensor:
    """I_head per position for outputs ``[..., C]``: categorical diag(p) − ppᵀ; gaussian I/σ²."""
    if head == "categorical":
        p = torch.softmax(f, -1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    if head == "gaussian":
        eye = torch.eye(f.shape[-1], dtype=f.dtype)
        return (eye / sigma**2).expand(*f.shape, f.shape[-1])
    raise AssertionError(head)


def jacobian(net: nn.Module, out: Tensor, params: list[Tensor]) -> Tensor:
    """J ``[*out.shape, p]`` of one example's outputs by one backward pass per entry."""
    flat = out.reshape(-1)
    rows = []
    for k in range(flat.numel()):
        gs = torch.autograd.grad(flat[k], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)]))
    return torch.stack(rows).reshape(*out.shape, -1)


def per_example_jacobians(net: nn.Module, outputs: Outputs, n: int) -> tuple[Tensor, Tensor]:
    """(J ``[n, *P, C, p]``, outputs ``[n, *P, C]``), each example run alone."""
    params = [p for p in net.parameters() if p.requires_grad]
    js, outs = [], []
    for i in range(n):
        out = outputs(net, i)
        js.append(jacobian(net, out, params))
        outs.append(out.detach())
    return torch.stack(js), torch.stack(outs)


def reference_fisher(
    net: nn.Module,
    outputs: Outputs,
    n: int,
    head: str = "categorical",
    mask: Tensor | None = None,
    positions: str = "sum",
) -> Tensor:
    """The dense Fisher F ``[p, p]`` (see the module doc); ``mask`` ``[n, *P]`` (True: counts)."""
    j, out = per_example_jacobians(net, outputs, n)
    i_head = head_fisher(head, out)
    if mask is not None:
        i_head = i_head * mask.to(i_head.dtype)[..., None, None]
    c = out.shape[-1]
    jf = j.reshape(n, -1, c, j.shape[-1])
    f = torch.einsum("ntci,ntcd,ntdj->ij", jf, i_head.reshape(n, -1, c, c), jf)
    if positions == "mean":
        return f / (mask.sum() if mask is not None else out[..., 0].numel())
    return f / n


def reference_empirical(net: nn.Module, outputs: Outputs, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """The empirical Fisher (1/N) Σₙ gₙgₙᵀ of a categorical head, gₙ = Σₜ maskₙₜ Jₙₜᵀ (onehot(yₙₜ) − pₙₜ)."""
    n = labels.shape[0]
    j, out = per_example_jacobians(net, outputs, n)
    p = torch.softmax(out, -1)
    y = labels.clamp_min(0)
    s = torch.nn.functional.one_hot(y, out.shape[-1]).to(p.dtype) - p
    if mask is not None:
        s = s * mask.to(s.dtype).unsqueeze(-1)
    g = torch.einsum("n...c,n...ci->ni", s, j)
    return g.T @ g / n


def flat_index(net: nn.Module) -> dict[str, slice]:
    """Where each trainable parameter lives in the flat order of ``named_parameters``."""
    out, at = {}, 0
    for name, p in net.named_parameters():
        if p.requires_grad:
            out[name] = slice(at, at + p.numel())
            at += p.numel()
    return out


def hand_kfac(
    net: nn.Module,
    module: nn.Module,
    outputs: Outputs,
    n: int,
    head: str = "categorical",
    mode: str = "expand",
    unfold: Callable[[Tensor], Tensor] | None = None,
    bias: bool = True,
    channels_first: bool = False,
) -> tuple[Tensor, Tensor]:
    """KFAC factors (A, G) of a linear ``module`` by hand, one example at a time.

    A forward hook records the module's input at every call (turned into rows ``[1, T, d_in]`` by
    ``unfold``, default: flattened positions; several calls add positions) and adds a zero ``ε`` to its
    output (``[1, *, d_out]``, or ``[1, d_out, *]`` with ``channels_first``: convolutions); the Jacobian of
    the example's outputs with respect to ε gives the output gradients: Σᵣ gᵣgᵣᵀ = Jᵀ I_head J for any
    square root of I_head.

    expand: A = Σₙₜ âₙₜâₙₜᵀ/(N·T), G = (1/N) Σₙ Σₜ Jₙₜᵀ Iₙ Jₙₜ;  reduce: A = (1/N) Σₙ āₙāₙᵀ (ā the
    position mean of â), G = (1/N) Σₙ (Σₜ Jₙₜ)ᵀ Iₙ (Σₜ Jₙₜ).
    """
    seen: dict[str, list[Tensor]] = {"x": [], "eps": []}

    def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        # every call of the module (a recurrent cell's step) is one more group of positions
        seen["x"].append(args[0].detach())
        eps = torch.zeros_like(out, requires_grad=True)
        seen["eps"].append(eps)
        return out + eps

    h = module.register_forward_hook(hook)
    a_sum, g_sum, rows = None, None, 0
    try:
        for i in range(n):
            seen["x"], seen["eps"] = [], []
            out = outputs(net, i)
            c = out.shape[-1]
            i_head = head_fisher(head, out.detach()).reshape(-1, c, c)
            jts, rows_a = [], []
            for x, eps in zip(seen["x"], seen["eps"]):
                j = jacobian(net, out, [eps]).reshape(i_head.shape[0], c, -1)  # [K, C, |ε|]
                d_out = eps.shape[1] if channels_first else eps.shape[-1]
                if channels_first:
                    jts.append(j.reshape(j.shape[0], c, d_out, -1).transpose(2, 3))
                else:
                    jts.append(j.reshape(j.shape[0], c, -1, d_out))
                rows_a.append(x[0].reshape(-1, x.shape[-1]) if unfold is None else unfold(x)[0])  # [T, d_in]
            jt = torch.cat(jts, 2)
            a = torch.cat(rows_a, 0)
            if bias:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
            if mode == "expand":
                a_i = a.T @ a
                rows += a.shape[0]
                g_i = torch.einsum("kctd,kce,ketf->df", jt, i_head, jt)
            else:
                am = a.mean(0, keepdim=True)
                a_i = am.T @ am
                rows += 1
                js = jt.sum(2)  # [K, C, d_out]
                g_i = torch.einsum("kcd,kce,kef->df", js, i_head, js)
            a_sum = a_i if a_sum is None else a_sum + a_i
            g_sum = g_i if g_sum is None else g_sum + g_i
    finally:
        h.remove()
    assert a_sum is not None and g_sum is not None
    return a_sum / rows, g_sum / n

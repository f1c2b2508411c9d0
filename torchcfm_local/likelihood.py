r"""Likelihoods of flow fields by the instantaneous change of variables.

A *flow field* is any callable ``f(t, x)`` in torchdyn's convention: ``t`` a 0-dim tensor (one
time for the whole batch), ``x`` of shape ``(B, *shape)``, returning a tensor shaped like ``x``.
torchcfm's ``torch_wrapper(model)`` (which calls ``t.repeat(B)`` and therefore needs a scalar
``t``) and :class:`~torchcfm_local.solvers.VelocityField` are both flow fields. Every function
here calls the field with a 0-dim ``t`` only.

Along a solution of :math:`\dot x(t) = f(t, x(t))` the density transported by the flow obeys
(Chen et al. 2018, "Neural ODEs", Theorem 1; Grathwohl et al. 2019, FFJORD)

.. math::
    \frac{d}{dt} \log p_t(x(t)) = -\nabla\cdot f(t, x(t)),

so for the torchcfm convention (noise at ``t = 0``, data at ``t = 1``)

.. math::
    \log p_\text{data}(x) = \log p_\text{noise}(z)
        + \int_{t_\text{data}}^{t_\text{noise}} \nabla\cdot f(t, x(t))\, dt,
    \qquad z = x(t_\text{noise}),\; x(t_\text{data}) = x.

Local Flow Matching (Xu, Cheng & Xie 2024, eq. 26) sums one such integral per block, each over
the block's own unit time interval, with the standard normal as the prior of the last block.

The divergence is either exact (the trace of the full Jacobian, ``D`` vector-Jacobian products
after one forward pass, vectorized in groups) or Hutchinson's estimator
:math:`\epsilon^\top (\partial f/\partial x)\, \epsilon` with one Rademacher probe
:math:`\epsilon` per sample, drawn once per integration and held fixed along the trajectory
(FFJORD), which makes the integral an unbiased estimate at one VJP per evaluation.

Both assume the field treats samples independently (sample ``i`` of the output depends on sample
``i`` of the input only): put networks with batch statistics in ``eval()`` mode first.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from . import exact_trace
from ._checks import positive_int
from .solvers import NONFINITE_VELOCITY, ODEOptions, make_solver

__all__ = [
    "FlowDivergence",
    "standard_normal_log_prob",
    "flow_divergence",
    "log_prob",
    "bits_per_dim",
    "ESTIMATORS",
]

#: Names accepted by ``estimator=``.
ESTIMATORS = ("exact", "hutchinson")

#: Above this many dimensions per sample the exact divergence warns (its cost is ``D`` VJPs).
EXACT_WARN_DIM = 512

_DEFAULT_OPTIONS = ODEOptions()

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class FlowDivergence:
    """Result of :func:`flow_divergence`.

    Attributes:
        x: the state at ``t1``, shape ``(B, *shape)``, detached.
        div_integral: :math:`\\int_{t_0}^{t_1} \\nabla\\cdot f(t, x(t))\\, dt` per sample,
            shape ``(B,)`` (an unbiased estimate with ``estimator="hutchinson"``), detached.
        nfe: number of evaluations of the field (each on the whole batch, each followed by its
            divergence: ``D`` batched VJPs for ``"exact"``, one for ``"hutchinson"``).
    """

    x: Tensor
    div_integral: Tensor
    nfe: int


def standard_normal_log_prob(z: Tensor) -> Tensor:
    r"""Log density of :math:`\mathcal N(0, I_D)` in nats, one value per sample.

    .. math:: \log \mathcal N(z; 0, I_D) = -\tfrac12 \lVert z \rVert^2 - \tfrac D2 \log(2\pi),
        \qquad D = \prod \text{shape}.

    Args:
        z: ``(B, *shape)``, floating.

    Returns:
        ``(B,)``.
    """
    _check_batch(z, "z")
    flat = z.flatten(1)
    return -0.5 * (flat.pow(2).sum(1) + flat.shape[1] * _LOG_2PI)


def flow_divergence(
    field: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    t0: float,
    t1: float,
    options: "ODEOptions | str | dict | None" = None,
    estimator: str = "exact",
    generator: Optional[torch.Generator] = None,
) -> FlowDivergence:
    r"""Carry ``x`` along ``dx/dt = field(t, x)`` from ``t0`` to ``t1`` with its divergence integral.

    Solves the augmented ODE (state ``(B, D + 1)``: the flattened ``x`` and the running integral)

    .. math::
        \frac{d}{dt}\begin{pmatrix} x \\ \ell \end{pmatrix}
        = \begin{pmatrix} f(t, x) \\ \nabla\cdot f(t, x) \end{pmatrix},
        \qquad x(t_0) = x,\; \ell(t_0) = 0,

    and returns :math:`x(t_1)` and :math:`\ell(t_1) = \int_{t_0}^{t_1} \nabla\cdot f\, dt`.
    ``t1 < t0`` integrates backward (the integral then has the sign of a backward integral).
    Internally the solver runs forward in :math:`s = |t - t_0|` with the field
    :math:`\pm f(t_0 \pm s, x)`, so torchdyn's own time reversal is not used.

    The solver is :func:`~torchcfm_local.solvers.make_solver` ``(options.solver)``: adaptive
    solvers use ``options.atol`` / ``options.rtol`` (the error norm covers the whole augmented
    state of the batch); fixed-step solvers take ``options.steps`` equal steps over
    ``[t0, t1]``. No autograd graph is kept: gradients are enabled only inside each divergence
    evaluation, and the outputs are detached.

    Divergence estimators (``estimator=``):

    * ``"exact"``: :math:`\operatorname{tr} \partial f / \partial x = \sum_i e_i^\top J e_i`
      from ``D`` vector-Jacobian products with the unit vectors after one forward pass, in groups
      through :func:`torch.func.vmap` (on the CPU groups of ``k`` with ``k * B <= 8192``, one
      VJP at a time for larger batches; see :data:`torchcfm_local.exact_trace.MODES`); if the field's backward cannot
      be vmapped, ``torch.autograd.grad(..., is_grads_batched=True)``, then a plain loop. Cost
      grows with ``D`` (about ``D`` backward passes); warns above :data:`EXACT_WARN_DIM`.
    * ``"hutchinson"``: :math:`\epsilon^\top J \epsilon` with Rademacher probes drawn once,
      ``eps = 2 * torch.randint(0, 2, x.shape, generator=generator) - 1`` (on the generator's
      device, or ``x``'s when ``generator`` is ``None``, then moved to ``x``'s device and dtype),
      fixed along the trajectory. :math:`\mathbb E[\epsilon^\top J \epsilon] = \operatorname{tr} J`,
      and the per-sample variance is :math:`\sum_{i<j} (M_{ij} + M_{ji})^2` for
      :math:`M = \int J\, dt` (linear in the solver's stages, so the integral stays unbiased).

    Args:
        field: flow field ``f(t, x)``, ``t`` a 0-dim tensor; samples must be independent.
        x: ``(B, *shape)`` floating, finite: the state at ``t0``.
        t0, t1: start and end time (finite).
        options: :class:`~torchcfm_local.solvers.ODEOptions`, a solver name, a dict of its
            fields, or ``None`` (the default ``ODEOptions()``: 16 RK4 steps).
        estimator: ``"exact"`` or ``"hutchinson"``.
        generator: random source of the Hutchinson probes.

    Returns:
        :class:`FlowDivergence` with ``x`` ``(B, *shape)``, ``div_integral`` ``(B,)``, ``nfe``.
    """
    t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
    options = _check_inputs(field, x, options, estimator, generator)
    with torch.no_grad():
        return _flow_divergence(field, x.detach(), t0, t1, options, estimator, generator)


def log_prob(
    field: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    *,
    t_data: float = 1.0,
    t_noise: float = 0.0,
    options: "ODEOptions | str | dict | None" = None,
    estimator: str = "exact",
    chunk_size: int = 4096,
    generator: Optional[torch.Generator] = None,
    prior_log_prob: Callable[[Tensor], Tensor] = standard_normal_log_prob,
) -> Tensor:
    r"""Log density (nats) of ``x`` under the flow that carries the prior at ``t_noise`` to ``t_data``.

    .. math::
        \log p(x) = \log p_\text{prior}(z)
            + \int_{t_\text{data}}^{t_\text{noise}} \nabla\cdot f(t, x(t))\, dt,

    where :math:`x(t)` solves :math:`\dot x = f(t, x)` with :math:`x(t_\text{data}) = x` and
    :math:`z = x(t_\text{noise})`. The defaults follow torchcfm (noise at ``t = 0``, data at
    ``t = 1``), so the integral runs backward from 1 to 0: :math:`-\int_0^1 \nabla\cdot f\,dt`.
    For an LFM model this is one block's term of paper eq. 26 with the block's own prior.

    Samples are processed in chunks of ``chunk_size`` (memory is bounded by one chunk); no
    autograd graph is kept. With a fixed-step solver the result does not depend on the chunking
    (up to float rounding); an adaptive solver picks its steps per chunk. Hutchinson probes are
    drawn chunk after chunk from ``generator``.

    Args:
        field: flow field ``f(t, x)``, ``t`` a 0-dim tensor (e.g. ``torch_wrapper(model)``).
        x: ``(B, *shape)`` floating, finite: data-side samples.
        t_data, t_noise: times of the data and of the prior (finite, may be equal).
        options, estimator, generator: as in :func:`flow_divergence`.
        chunk_size: samples per integration, ``>= 1``.
        prior_log_prob: ``(B, *shape) -> (B,)`` log density of the prior at ``t_noise``.

    Returns:
        ``(B,)`` log densities in nats, detached, in ``x``'s dtype.
    """
    t_data, t_noise = _check_time(t_data, "t_data"), _check_time(t_noise, "t_noise")
    options = _check_inputs(field, x, options, estimator, generator)
    positive_int(chunk_size, "chunk_size")
    if not callable(prior_log_prob):
        raise TypeError(f"prior_log_prob must be callable, got {type(prior_log_prob).__name__}")
    out = []
    with torch.no_grad():
        for chunk in x.detach().split(chunk_size):
            res = _flow_divergence(field, chunk, t_data, t_noise, options, estimator, generator)
            prior = prior_log_prob(res.x)
            if not isinstance(prior, Tensor) or prior.shape != (chunk.shape[0],):
                got = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
                raise ValueError(f"prior_log_prob must return shape ({chunk.shape[0]},), got {got}")
            out.append(prior.to(x.dtype) + res.div_integral)
    if not out:
        return x.new_zeros(0)
    return torch.cat(out)


def chain_log_prob_terms(fields, x: Tensor, options: ODEOptions, *, estimator: str = "exact", chunk_size: int,
                         generator: Optional[torch.Generator] = None, cond: Optional[Tensor] = None,
                         device=None, dtype=None, data_map=None):
    r"""Per-block log-density terms of a chain of flows (paper eq. 26), each block integrated once.

    Block ``n`` (``fields[n-1]``) carries ``x_{n-1}`` from t = 1 to ``x_n`` at t = 0, with
    ``x_0 = A(x)`` (``A = data_map``, the identity when ``None``); then

    .. math::
        \log p(x) = \log N(x_N; 0, I) + \sum_{n=1}^N \int_1^0 \nabla\cdot v_n(x_n(t), t)\, dt
            + \log|\det \partial A / \partial x|.

    Args:
        fields: the blocks' :class:`~torchcfm_local.solvers.VelocityField` s, block 1 first.
        x: ``(B, *shape)`` samples; moved to ``device``/``dtype`` chunk by chunk.
        options: ODE options of every block.
        estimator, generator: as in :func:`flow_divergence`.
        chunk_size: samples integrated at once.
        cond: ``(B, c)`` conditioning input of the networks (each chunk binds its rows), or ``None``.
        data_map: an affine map of the data in front of block 1 with ``apply(x)`` and a constant
            ``log_det()`` (a :class:`~torchcfm_local.standardize.Standardizer`), or ``None``.

    Returns:
        :class:`~torchcfm_local.reports.LogProbTerms` (float64, on the CPU).
    """
    from .reports import LogProbTerms

    prior = torch.empty(x.shape[0], dtype=torch.float64)
    div = torch.empty(len(fields), x.shape[0], dtype=torch.float64)
    nfe = [0.0] * len(fields)
    n_chunks = math.ceil(x.shape[0] / chunk_size)
    for i in range(0, x.shape[0], chunk_size):
        y = x[i : i + chunk_size].to(device)
        y = (y if data_map is None else data_map.apply(y)).to(dtype)
        c = None if cond is None else cond[i : i + chunk_size].to(device, dtype)
        for n, field in enumerate(fields):
            res = flow_divergence(field.bind(c), y, t0=1.0, t1=0.0, options=options.for_block(n + 1, len(fields)),
                                  estimator=estimator, generator=generator)
            y = res.x
            div[n, i : i + chunk_size] = res.div_integral.double().cpu()
            nfe[n] += res.nfe / n_chunks
        prior[i : i + chunk_size] = standard_normal_log_prob(y.double()).cpu()
    log_det = 0.0 if data_map is None else float(data_map.log_det())
    return LogProbTerms(prior + div.sum(0) + log_det, prior, div, tuple(nfe), log_det)


def bits_per_dim(log_prob_nats: Tensor, dim: int, *, n_bins: int = 256, scale: float = 1.0) -> Tensor:
    r"""Bits per dimension of dequantized discrete data from continuous log densities.

    Assumed preprocessing: each of the ``D = dim`` coordinates is an integer
    :math:`k \in \{0, \dots, K-1\}` (``K = n_bins``, 256 for 8-bit images), dequantized with
    :math:`u \sim U[0, 1)` and mapped affinely to the model's space,

    .. math:: y = \frac{k + u}{K} \in [0, 1), \qquad x = \text{scale}\cdot y + \text{shift},

    e.g. ``scale = 1`` for data in ``[0, 1)`` and ``scale = 2`` (shift -1) for data in
    ``[-1, 1)``; ``log_prob_nats`` is :math:`\log p_X(x)`. The shift does not enter.

    Derivation: on :math:`v = k + u = K (x - \text{shift}) / \text{scale} \in [0, K)^D` the
    density is :math:`p_V(v) = p_X(x)\, (\text{scale}/K)^D`. The probability of the integer
    vector is :math:`P(k) = \int_{[0,1)^D} p_V(k + u)\,du \ge \exp \mathbb E_u \log p_V(k + u)`
    (Jensen; Theis et al. 2016, Ho et al. 2019), so the bound in bits per dimension is

    .. math::
        \text{bpd} = -\frac{\log p_V(v)}{D \ln 2}
        = -\frac{\log p_X(x) + D \log(\text{scale})}{D \ln 2} + \log_2 K,

    averaged over samples (and over ``u``) by the caller. Checks: a uniform density on
    :math:`[0, 1)^D` (``scale = 1``) gives :math:`\log_2 K` (8 bits for 256 bins); a density
    uniform on one bin, :math:`[0, 1/K)^D`, gives 0.

    Data preprocessed as :math:`x = (k + u)/255` (torchvision's ``ToTensor`` divides by 255)
    are :math:`(256/255) \cdot (k+u)/256`: use ``n_bins=256, scale=256/255`` (times 2 for
    ``[-1, 1]``).

    Args:
        log_prob_nats: ``(B,)`` (or any shape) log densities :math:`\log p_X(x)` in nats.
        dim: ``D``, the number of dimensions per sample, ``>= 1``.
        n_bins: ``K``, the number of discrete levels per dimension, ``>= 1``.
        scale: width of the model's data interval per unit of the ``[0, 1)`` range, ``> 0``.

    Returns:
        Bits per dimension, shaped like ``log_prob_nats``.
    """
    if not isinstance(log_prob_nats, Tensor) or not log_prob_nats.is_floating_point():
        got = log_prob_nats.dtype if isinstance(log_prob_nats, Tensor) else type(log_prob_nats).__name__
        raise TypeError(f"log_prob_nats must be a floating tensor, got {got}")
    positive_int(dim, "dim")
    positive_int(n_bins, "n_bins")
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    ln2 = math.log(2.0)
    return -(log_prob_nats + dim * math.log(scale)) / (dim * ln2) + math.log2(n_bins)


# --------------------------------------------------------------------------------------------
# internals


def _flow_divergence(field, x, t0, t1, options, estimator, generator) -> FlowDivergence:
    """Validated core of :func:`flow_divergence`; call under ``torch.no_grad()``."""
    batch, shape = x.shape[0], x.shape[1:]
    dim = x[0].numel()
    if batch == 0 or t0 == t1:
        return FlowDivergence(x=x.clone(), div_integral=x.new_zeros(batch), nfe=0)

    sign = 1.0 if t1 > t0 else -1.0
    length = abs(t1 - t0)
    probes = _rademacher(x, generator) if estimator == "hutchinson" else None
    state = {"nfe": 0, "exact": exact_trace.FIRST}

    def divergence(xs: Tensor, t: Tensor):
        """``field(t, xs)`` and its divergence, both detached; xs ``(B, *shape)``."""
        with torch.enable_grad():
            xg = xs.detach().requires_grad_(True)
            y = field(t, xg)
            state["nfe"] += 1
            if not isinstance(y, Tensor) or y.shape != xs.shape:
                got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(f"field(t, x) must return a tensor shaped like x {tuple(xs.shape)}, got {got}")
            if not y.requires_grad:  # the field does not depend on x
                return y.detach(), xs.new_zeros(batch)
            if probes is not None:
                (vjp,) = torch.autograd.grad(y, xg, probes, allow_unused=True)
                div = xs.new_zeros(batch) if vjp is None else (vjp * probes).flatten(1).sum(1)
            else:
                div = exact_trace.exact_divergence(y, xg, state)
        return y.detach(), div.detach().to(xs.dtype)

    def augmented(s: Tensor, z: Tensor) -> Tensor:
        t = (t0 + sign * s).reshape(())  # torchdyn's adaptive loop passes shape (1,)
        y, div = divergence(z[:, :dim].reshape(batch, *shape), t.to(z.dtype))
        if options.adaptive and not (torch.isfinite(y).all() and torch.isfinite(div).all()):
            raise FloatingPointError(NONFINITE_VELOCITY)
        return sign * torch.cat([y.reshape(batch, dim), div[:, None]], dim=1)

    from torchdyn.numerics import odeint

    z0 = torch.cat([x.reshape(batch, dim), x.new_zeros(batch, 1)], dim=1)
    solver = make_solver(options.solver, x.dtype)
    if options.adaptive:
        s_span = torch.tensor([0.0, length], dtype=x.dtype, device=x.device)
        _, traj = odeint(augmented, z0, s_span, solver, atol=options.atol, rtol=options.rtol)
    else:
        s_span = torch.linspace(0.0, length, options.steps + 1, dtype=x.dtype, device=x.device)
        _, traj = odeint(augmented, z0, s_span, solver, save_at=s_span[-1:])
    end = traj[-1]
    return FlowDivergence(
        x=end[:, :dim].reshape(batch, *shape).detach(),
        div_integral=end[:, dim].detach(),
        nfe=state["nfe"],
    )


def _rademacher(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else x.device
    eps = torch.randint(0, 2, x.shape, generator=generator, device=device)
    return (2 * eps - 1).to(device=x.device, dtype=x.dtype)


def _check_inputs(field, x, options, estimator, generator) -> ODEOptions:
    """Boundary checks shared by the public functions; returns the coerced ODE options."""
    _check_field(field)
    _check_batch(x, "x")
    _check_finite(x, "x")
    options = ODEOptions.coerce(options, _DEFAULT_OPTIONS)
    _check_estimator(estimator)
    _check_generator(generator)
    if estimator == "exact" and x[0].numel() > EXACT_WARN_DIM:
        warnings.warn(
            f"exact divergence on D={x[0].numel()} dimensions costs D={x[0].numel()} "
            "vector-Jacobian products per evaluation; consider estimator='hutchinson'",
            stacklevel=3,
        )
    return options


def _check_batch(x, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *shape), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (B, *shape) with at least 2 dims, got shape {tuple(x.shape)}")


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf entries")


def _check_time(t, name: str) -> float:
    if isinstance(t, Tensor) and t.numel() == 1:
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"{name} must be a finite number, got {t!r}")
    return float(t)


def _check_estimator(estimator) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_field(field) -> None:
    if not callable(field):
        raise TypeError(f"field must be callable as field(t, x), got {type(field).__name__}")

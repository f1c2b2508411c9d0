r"""Reflow: retrain every block of a trained flow on its own noise -> data couplings, along straight lines.

A trained model (an N-block :class:`~torchcfm_local.LocalFlowMatching`; the global flow is N = 1)
decodes ``z ~ N(0, I)`` by integrating blocks N, ..., 1. Recording the states between the blocks
gives, for each ``z``, a chain

.. math::
    x_N = z \to x_{N-1} \to \cdots \to x_0,

where block n carries its noise side :math:`x_n` (block time t = 0) to its data side
:math:`x_{n-1}` (t = 1). These couplings are deterministic: each noise-side point has exactly one
data-side partner. :func:`reflow` retrains block n on them with the *linear* path

.. math::
    x_t = (1 - t)\, x_n + t\, x_{n-1}, \qquad u_t = x_{n-1} - x_n,
    \qquad \mathcal{L}_n = \mathbb{E}\, \| v_n(t, x_t) - u_t \|^2,

starting from the block's current weights (the rectified-flow step of Liu et al. 2022). Because
the couplings no longer cross the way independent pairs do, the regressed field follows straighter
paths: an adaptive solver needs fewer evaluations and a few Euler steps come closer to the exact
decode, while the distribution the model samples stays the one it sampled before (up to the
training error). The result is an ordinary model of the same class and schedule; its matcher is
torchcfm's ``ConditionalFlowMatcher(sigma=0)`` so that anything that reads the path kind (the
distillation's :func:`~.plan.step_coefficients`, files written by ``save``) sees the path the
blocks were last trained on.

The chain is produced by :func:`~.pairs.teacher_pairs` with one stage per block, in the blocks'
space: with a fitted data standardization the couplings, and the retrained blocks, stay behind the
same affine map, which the copy keeps.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .._checks import per_item_ints, positive_int
from ..inputs import cond_input
from ..reports import tail_mean
from ..solvers import ODEOptions
from ..training.loop import OptimConfig, StepLoop
from .pairs import teacher_pairs
from .plan import _path_kind, distill_plan

__all__ = ["reflow", "reflow_policy", "ReflowReport", "BlockReflow", "Straightness", "REFLOW_ODE", "EULER_STEPS"]

#: The accurate solver of the couplings and of the reference decode: dopri5 at atol = rtol = 1e-5
#: (the ``"quality"`` sampling preset).
REFLOW_ODE = ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
#: Euler steps per block whose decodes are compared with the accurate decode.
EULER_STEPS = (1, 2, 4)


@dataclass
class BlockReflow:
    """The retraining of one block.

    Attributes:
        block: block number (1 = next to the data).
        batches: optimizer steps; ``losses``: the loss of every step (per coordinate).
        pair_nfe: network evaluations per sample the accurate solver spent on this block's couplings.
        train_seconds: wall time of the optimizer steps.
    """

    block: int
    batches: int
    losses: list[float] = field(repr=False)
    pair_nfe: float
    train_seconds: float

    @property
    def first_loss(self) -> float:
        """Mean loss over the first 10% of steps (at least one): the warm start on the straight target."""
        k = max(1, len(self.losses) // 10)
        return sum(self.losses[:k]) / k

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one)."""
        return tail_mean(self.losses)

    def curve(self, points: int = 20) -> list[tuple[int, float]]:
        """The loss curve in at most ``points`` windows: ``(last step of the window, mean loss)``."""
        edges = np.linspace(0, len(self.losses), min(points, len(self.losses)) + 1).round().astype(int)
        return [(int(b), float(np.mean(self.losses[a:b]))) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def to_dict(self) -> dict:
        """The record without the per-step losses: first/final/min loss and the windowed curve."""
        return {"block": self.block, "batches": self.batches, "pair_nfe": self.pair_nfe,
                "train_seconds": self.train_seconds, "first_loss": self.first_loss, "final_loss": self.final_loss,
                "min_loss": min(self.losses), "curve": self.curve()}


@dataclass
class Straightness:
    """How hard a model's decode is to integrate, on a fixed batch of z (in the blocks' space).

    Attributes:
        adaptive_nfe: network evaluations per sample of the accurate (adaptive) solver, all blocks.
        adaptive_nfe_per_block: the same per block, block 1 first.
        euler_mse: Euler steps per block -> mean squared deviation (per coordinate) of that Euler
            decode from the accurate decode of the same z; a straight field has 0 at any step count.
    """

    adaptive_nfe: float
    adaptive_nfe_per_block: list[float]
    euler_mse: dict[int, float]


@dataclass
class ReflowReport:
    """What :func:`reflow` did and what it changed.

    Attributes:
        blocks: one :class:`BlockReflow` per block, block 1 first.
        before, after: :class:`Straightness` of the original and of the reflowed model (same z).
        n_pairs, n_eval: couplings trained on; z of the straightness measurements.
        batch_size, lr: optimizer settings; seed: of the z, the conditions and the minibatches.
        ode: the accurate solver's options; original_path: the original model's path kind
            (``"trig"``, ``"linear"`` or ``None`` for other matchers); the reflowed one is ``"linear"``.
        pair_seconds, total_seconds: wall time of the couplings and of the whole call.
    """

    blocks: list[BlockReflow]
    before: Straightness
    after: Straightness
    n_pairs: int
    n_eval: int
    batch_size: int
    lr: float
    seed: int
    ode: dict
    original_path: Optional[str]
    pair_seconds: float
    total_seconds: float

    def to_dict(self) -> dict:
        """Plain data for JSON (``euler_mse`` keys become strings there)."""
        out = asdict(self)
        out["blocks"] = [b.to_dict() for b in self.blocks]
        return out

    def summary(self) -> str:
        """A markdown table: straightness before and after, then one row per block."""
        steps = sorted(self.before.euler_mse)
        rows = ["| model | adaptive NFE | " + " | ".join(f"Euler-{k} MSE" for k in steps) + " |",
                "|---|---|" + "---|" * len(steps)]
        for name, s in (("original", self.before), ("reflowed", self.after)):
            rows.append(f"| {name} | {s.adaptive_nfe:.1f} | " + " | ".join(f"{s.euler_mse[k]:.3g}" for k in steps) + " |")
        rows += ["", "| block | batches | first loss | final loss | pair NFE | train s |", "|---|---|---|---|---|---|"]
        for b in self.blocks:
            rows.append(f"| {b.block} | {b.batches} | {b.first_loss:.3g} | {b.final_loss:.3g} | {b.pair_nfe:.1f} "
                        f"| {b.train_seconds:.1f} |")
        return "\n".join(rows)


def _conditions(model, cond, counts: Sequence[int], gen: torch.Generator) -> list[Optional[torch.Tensor]]:
    """One ``(count, cond_dim)`` tensor of conditions per entry of ``counts`` (``None`` for an
    unconditional model): ``cond`` itself when it has exactly ``count`` rows, else rows drawn from
    it uniformly with replacement."""
    if model.cond_dim is None:
        model.check_cond(cond, 0)  # raises for a condition given to an unconditional model
        return [None] * len(counts)
    if cond is None:
        raise ValueError(f"this model is conditional (cond_dim={model.cond_dim}); reflow needs cond, the conditions "
                         f"(m, {model.cond_dim}) to decode its couplings with (e.g. the training conditions)")
    if isinstance(cond, np.ndarray):
        cond = torch.from_numpy(cond)
    if not isinstance(cond, torch.Tensor) or cond.dim() < 1 or not len(cond):
        got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ValueError(f"cond must have shape (m, {model.cond_dim}) with m >= 1 (one row per condition), got {got}")
    cond = model.check_cond(cond, cond.shape[0]).to(model.dtype)  # as fit: (m,) is accepted for cond_dim = 1
    return [cond if len(cond) == n else cond[torch.randint(0, len(cond), (n,), generator=gen)] for n in counts]


def _straightness(model, z: torch.Tensor, cond, accurate: ODEOptions, steps: Sequence[int],
                  chunk_size: int) -> Straightness:
    """The accurate decode's NFE and the Euler decodes' deviation from it (see :class:`Straightness`)."""
    plan = distill_plan(model.n_blocks)
    states, nfe = teacher_pairs(model, plan, z, ode=accurate, chunk_size=chunk_size, cond=cond)
    ref = states[-1].double()
    euler = {}
    for k in steps:
        try:
            out, _ = teacher_pairs(model, plan, z, ode=ODEOptions(solver="euler", steps=k), chunk_size=chunk_size,
                                   cond=cond)
            euler[k] = float(((out[-1].double() - ref) ** 2).mean())
        except FloatingPointError:
            euler[k] = math.inf  # the Euler decode overflowed
    return Straightness(float(sum(nfe)), [float(v) for v in nfe[::-1]], euler)


def _train_block(model, n: int, noise: torch.Tensor, data: torch.Tensor, cond: Optional[torch.Tensor],
                 batches: int, batch_size: int, optim: OptimConfig, gen: torch.Generator, progress: bool) -> StepLoop:
    """Regress block ``n`` of ``model`` (warm: its current weights) on the straight path between the
    fixed couplings ``noise[i] -> data[i]`` (``(n_pairs, *shape)`` on the CPU), minibatches of
    ``batch_size`` pairs drawn with replacement from ``gen``; times from the block's time distribution."""
    device, dtype = model.device, model.dtype
    field_ = model.field(n).bind()
    times = model.block_matcher(n)  # U(0, 1) or the model's t_beta
    path = model.matcher  # the linear ConditionalFlowMatcher(sigma=0)

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, noise.shape[0], (batch_size,), generator=gen)
        x0 = noise[idx]
        t = times.sample_time(batch_size, x0, gen).to(device, dtype)  # drawn on the CPU, as idx
        x0, x1 = x0.to(device, dtype), data[idx].to(device, dtype)
        t, xt, ut = path.sample_location_and_conditional_flow(x0, x1, t)
        view = field_ if cond is None else field_.bind(cond_input(cond[idx].to(device, dtype)))
        return torch.mean((view(t, xt) - ut) ** 2)

    loop = StepLoop(model.nets[n - 1], batches, optim, desc=f"reflow block {n}/{model.n_blocks}",
                    progress=progress, error_hint="; lower lr")
    loop.run(loss_fn)
    model.nets[n - 1].eval()
    return loop


def _check_model(model) -> None:
    from ..composer import LocalFlowMatching

    if not isinstance(model, LocalFlowMatching):
        raise TypeError(f"reflow takes a LocalFlowMatching model, got {type(model).__name__}")
    if model.n_trained < model.n_blocks:
        raise RuntimeError(f"reflow needs a fully trained model; {model.n_trained} of {model.n_blocks} blocks are "
                           "trained (call fit first)")
    from ..shared import shared_network

    if shared_network(model) is not None:
        raise ValueError("reflow retrains one block after another, but this model's blocks share one network: "
                         "retraining block n would change the blocks retrained before it")


def _linear_copy(model):
    """A deep copy of ``model`` (weights included: the warm start) whose matcher is the linear path."""
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    new = copy.deepcopy(model)
    new.matcher = ConditionalFlowMatcher(sigma=0.0)
    new.fit_state, new.last_stats = None, None  # not the run a fit checkpoint recorded
    return new


def reflow(
    model,
    n_pairs: int = 10000,
    *,
    cond=None,
    batches_per_block: Union[int, Sequence[int]] = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    lr_decay: Optional[str] = "cosine",
    ode=None,
    n_eval: int = 1000,
    euler_steps: Sequence[int] = EULER_STEPS,
    seed: int = 0,
    chunk_size: int = 8192,
    progress: bool = False,
):
    r"""Reflow a trained flow: a copy whose blocks are retrained on the model's own couplings along straight lines.

    1. Couplings: ``n_pairs`` draws ``z ~ N(0, I)`` (seeded) decoded by the model with ``ode``
       (default :data:`REFLOW_ODE`), keeping the chain ``x_N = z, x_{N-1}, ..., x_0`` in the blocks'
       space (:func:`~.pairs.teacher_pairs`, one stage per block).
    2. A deep copy of the model (so the original is untouched and every block starts from its
       trained weights) gets the linear matcher ``ConditionalFlowMatcher(sigma=0)``; block n is
       trained with Adam for ``batches_per_block`` steps on minibatches of ``batch_size`` couplings
       ``(x_n, x_{n-1})`` drawn with replacement, loss ``mean |v_n(t, x_t) - (x_{n-1} - x_n)|^2`` at
       ``x_t = (1 - t) x_n + t x_{n-1}``, ``t`` from the model's time distribution (``t_beta``).
    3. Straightness of the original and of the copy on ``n_eval`` other z (:class:`Straightness`).

    Args:
        model: a fully trained :class:`~torchcfm_local.LocalFlowMatching` (any schedule; conditional too).
        n_pairs: couplings (``>= 2`` and ``>= batch_size``).
        cond: conditional models only (then required): conditions ``(m, cond_dim)``. With
            ``m == n_pairs`` row i conditions coupling i; otherwise each coupling (and each
            evaluation z) draws a row uniformly with replacement. Retraining passes each coupling's
            condition (no condition dropout: the null-condition field is kept as it was).
        batches_per_block: optimizer steps per block (an int, or one per block, block 1 first).
        batch_size, lr, lr_decay: Adam settings (``lr_decay``: ``"cosine"`` to 0, or ``None``).
        ode: the accurate solver (an :class:`ODEOptions`, solver name or dict) of the couplings and
            the reference decodes; the adaptive NFE is measured with it when it is adaptive, else
            with dopri5 at its tolerances.
        n_eval: z of the straightness measurements; euler_steps: Euler steps per block compared there.
        seed: seeds the z, the drawn conditions and the minibatches.
        chunk_size: samples integrated at once. progress: progress bars.

    Returns:
        ``(reflowed, report)``: the new model (same class, schedule, standardizer and networks) and
        its :class:`ReflowReport`.

    Raises:
        TypeError: not a LocalFlowMatching. RuntimeError: not fully trained.
        ValueError: bad sizes or settings; ``cond`` missing, unexpected or misshapen; blocks that share one
            network (:mod:`torchcfm_local.shared`), which block-by-block retraining would break.
        FloatingPointError: the decode of the couplings met NaN/Inf (the model diverged), or a loss did.
    """
    start = time.perf_counter()
    _check_model(model)
    batch_size = positive_int(batch_size, "batch_size")
    n_pairs = positive_int(n_pairs, "n_pairs", minimum=2)
    if n_pairs < batch_size:
        raise ValueError(f"n_pairs ({n_pairs}) must be at least batch_size ({batch_size})")
    n_eval, chunk_size = positive_int(n_eval, "n_eval"), positive_int(chunk_size, "chunk_size")
    batches = per_item_ints(batches_per_block, model.n_blocks, "batches_per_block", "block")
    steps = sorted({positive_int(k, "euler_steps") for k in euler_steps})
    optim = OptimConfig(lr=lr, lr_decay=lr_decay)
    accurate = ODEOptions.coerce(ode, REFLOW_ODE)
    measure = accurate if accurate.adaptive else REFLOW_ODE.with_(atol=accurate.atol, rtol=accurate.rtol)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n_pairs + n_eval, *model.shape), generator=gen, dtype=model.dtype)
    pair_cond, eval_cond = _conditions(model, cond, (n_pairs, n_eval), gen)
    z_pairs, z_eval = z[:n_pairs], z[n_pairs:]

    tick = time.perf_counter()
    try:
        states, pair_nfe = teacher_pairs(model, distill_plan(model.n_blocks), z_pairs, ode=accurate,
                                         chunk_size=chunk_size, progress=progress, cond=pair_cond)
    except FloatingPointError as err:
        raise FloatingPointError(f"reflow: the model diverged while decoding the {n_pairs} couplings (NaN/Inf with "
                                 f"{accurate.solver}); check the model and the ODE options") from err
    pair_seconds = time.perf_counter() - tick
    before = _straightness(model, z_eval, eval_cond, measure, steps, chunk_size)

    new = _linear_copy(model)
    N, reports = model.n_blocks, []
    train_gen = torch.Generator().manual_seed(seed + 1)
    for n in range(1, N + 1):  # block n: noise side states[N - n] (= x_n), data side states[N - n + 1] (= x_{n-1})
        loop = _train_block(new, n, states[N - n], states[N - n + 1], pair_cond, batches[n - 1], batch_size, optim,
                            train_gen, progress)
        reports.append(BlockReflow(n, loop.total, loop.losses, float(pair_nfe[N - n]), loop.elapsed))
    after = _straightness(new, z_eval, eval_cond, measure, steps, chunk_size)
    report = ReflowReport(reports, before, after, n_pairs, n_eval, batch_size, float(lr), int(seed),
                          accurate.to_dict(), _path_kind(model.matcher), pair_seconds, time.perf_counter() - start)
    return new, report


def reflow_policy(policy, demos_or_cond, n_pairs: int = 10000, **kwargs):
    """:func:`reflow` of a :class:`~torchcfm_local.policy.FlowPolicy`'s flow; returns ``(new policy, report)``.

    Args:
        policy: a trained ``FlowPolicy`` without sampling guidance (its couplings would be decoded
            with guidance that the retrained conditional field then bakes in).
        demos_or_cond: :class:`~torchcfm_local.policy.Demos` (their observation windows, normalized
            with the policy's fitted normalizer, are the conditions), or the normalized flattened
            conditions ``(m, To * Dobs)`` themselves.
        n_pairs, **kwargs: as for :func:`reflow`.

    The new policy is a deep copy with the reflowed flow; it saves and loads as any ``FlowPolicy``.
    """
    from ..policy.demos import Demos, windows
    from ..policy.policy import FlowPolicy

    if not isinstance(policy, FlowPolicy):
        raise TypeError(f"reflow_policy takes a FlowPolicy, got {type(policy).__name__}")
    if policy.obs_normalizer is None:
        raise RuntimeError("reflow_policy needs a trained policy (call fit first)")
    if policy.guidance is not None:
        raise ValueError(f"reflow_policy: this policy samples with guidance={policy.guidance}; set policy.guidance "
                         "= None first (reflow decodes its couplings without guidance)")
    cond = demos_or_cond
    if isinstance(demos_or_cond, Demos):
        bad = {k: d for k, d in policy.obs_dims.items() if k in demos_or_cond.obs and demos_or_cond.obs[k].shape[1] != d}
        if bad:
            raise ValueError(f"the demos' observations {sorted(bad)} do not have the policy's dims {bad}")
        obs_w, _ = windows(demos_or_cond, list(policy.obs_dims), policy.n_obs_steps, policy.horizon)
        cond = policy.obs_normalizer.normalize(obs_w).reshape(obs_w.shape[0], -1).float()
    flow, report = reflow(policy.flow, n_pairs, cond=cond, **kwargs)
    new = copy.deepcopy(policy)
    new.flow = flow
    return new, report

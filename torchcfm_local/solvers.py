"""ODE solving for flow blocks: solver choice, a correct RK4 for torchdyn, and NFE counting.

Every block of a :class:`~torchcfm_local.LocalFlowMatching` model is integrated with a torchdyn
``NeuralODE``. This module holds the pieces around it:

* :class:`RK4`, the classical fourth-order Runge-Kutta stepper written against torchdyn's solver
  interface. torchdyn's own ``"rk4"`` evaluates its stages at the wrong times, which makes it only
  first order for time-dependent fields (every flow-matching field is one), so the name ``"rk4"``
  here maps to this class.
* :class:`ODEOptions`, a frozen record of solver name, tolerances and fixed step count.
* :class:`VelocityField`, the adapter that gives any velocity network torchdyn's ``f(t, x)`` call,
  broadcasts ``t`` to a per-sample vector and counts network evaluations (NFE).
* :func:`integrate`, which runs one field over ``[t0, t1]`` (either direction) through a
  ``NeuralODE``.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import nn

from torchdyn.numerics.solvers.templates import DiffEqSolver

from ._checks import positive_int

__all__ = ["RK4", "ODEOptions", "VelocityField", "integrate", "make_solver", "SOLVERS"]


class RK4(DiffEqSolver):
    r"""Classical Runge-Kutta 4 (order 4) for torchdyn's fixed-step ``odeint``.

    .. math::
        k_1 = f(t, x),\; k_2 = f(t + \tfrac{h}{2}, x + \tfrac{h}{2} k_1),\;
        k_3 = f(t + \tfrac{h}{2}, x + \tfrac{h}{2} k_2),\; k_4 = f(t + h, x + h k_3),\\
        x_{t+h} = x + \tfrac{h}{6}(k_1 + 2 k_2 + 2 k_3 + k_4).

    Pass an instance (or the name ``"rk4"`` through :class:`ODEOptions`) wherever torchdyn accepts a
    solver, e.g. ``NeuralODE(field, solver=RK4())``.
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__(order=4, stepping_class="fixed")
        self.dtype = dtype

    def step(self, f, x, t, dt, k1=None, args=None):
        if k1 is None:
            k1 = f(t, x)
        half = 0.5 * dt
        k2 = f(t + half, x + half * k1)
        k3 = f(t + half, x + half * k2)
        k4 = f(t + dt, x + dt * k3)
        return None, x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4), None


def _torchdyn_solver(name: str) -> Callable[[torch.dtype], nn.Module]:
    def build(dtype: torch.dtype) -> nn.Module:
        from torchdyn.numerics.solvers.ode import str_to_solver

        return str_to_solver(name, dtype)

    return build


#: Solver name -> (constructor taking a dtype, whether it adapts its step size).
SOLVERS: dict[str, tuple[Callable[[torch.dtype], nn.Module], bool]] = {
    "euler": (_torchdyn_solver("euler"), False),
    "midpoint": (_torchdyn_solver("midpoint"), False),
    "rk4": (RK4, False),
    "dopri5": (_torchdyn_solver("dopri5"), True),
    "tsit5": (_torchdyn_solver("tsit5"), True),
}


def make_solver(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the torchdyn solver registered under ``name`` (see :data:`SOLVERS`)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[name][0](dtype)


@dataclass(frozen=True)
class ODEOptions:
    """How to integrate one block.

    The default, 16 classical RK4 steps per block (64 network evaluations), was chosen by
    measuring the round-trip error ``decode(encode(x)) - x`` of a trained 2D model against that of
    adaptive dopri5 at a similar cost (``benchmarks/bench_core.py``; its result file is
    ``benchmarks/results/core.md``). With fixed steps, results do not depend on how samples are
    chunked (up to float rounding); an adaptive solver picks one step size per chunk. Local blocks
    are short, nearly straight maps; for a long or curved block (a global flow) check the error or
    pick ``solver="dopri5"``.

    Args:
        solver: one of :data:`SOLVERS` (``"dopri5"``, ``"tsit5"``: adaptive; ``"rk4"``,
            ``"midpoint"``, ``"euler"``: fixed step).
        atol, rtol: tolerances of the adaptive solvers (ignored by fixed-step ones).
        steps: number of equal steps over the integration interval for fixed-step solvers (a
            block's whole unit interval in encode/decode/fit; ignored by adaptive ones).
        block_steps: a fixed-step count per block instead of ``steps`` for all, block 1 (the data
            side) first; its length must be the model's number of blocks (fixed-step solvers only).
            :func:`torchcfm_local.training.steps.choose_sampling_steps` picks one by measured error.
    """

    solver: str = "rk4"
    atol: float = 1e-6
    rtol: float = 1e-6
    steps: int = 16
    block_steps: Optional[tuple] = None

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; expected one of {sorted(SOLVERS)}")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        positive_int(self.steps, "steps")
        if self.block_steps is not None:
            if self.adaptive:
                raise ValueError(f"block_steps needs a fixed-step solver, got {self.solver!r}")
            if isinstance(self.block_steps, (str, bytes)) or not hasattr(self.block_steps, "__len__") \
                    or len(self.block_steps) == 0:
                raise ValueError(f"block_steps must be a non-empty sequence of step counts, got {self.block_steps!r}")
            for k in self.block_steps:
                positive_int(k, "each of block_steps")
            object.__setattr__(self, "block_steps", tuple(int(k) for k in self.block_steps))

    @property
    def adaptive(self) -> bool:
        return SOLVERS[self.solver][1]

    def for_block(self, n: int, n_blocks: int) -> "ODEOptions":
        """The options block ``n`` (1-based) of a model with ``n_blocks`` blocks is integrated with:
        these, with ``steps = block_steps[n - 1]`` when :attr:`block_steps` is set."""
        if self.block_steps is None:
            return self
        if len(self.block_steps) != n_blocks:
            raise ValueError(f"block_steps has {len(self.block_steps)} entries, the model has {n_blocks} blocks")
        return replace(self, steps=self.block_steps[n - 1], block_steps=None)

    def to_dict(self) -> dict:
        """The fields as a plain dict (how files store options; :meth:`coerce` reads it back)."""
        out = {"solver": self.solver, "atol": self.atol, "rtol": self.rtol, "steps": self.steps}
        if self.block_steps is not None:
            out["block_steps"] = list(self.block_steps)
        return out

    def with_(self, **changes) -> "ODEOptions":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def coerce(cls, value: "ODEOptions | str | dict | list | None", default: "ODEOptions") -> "ODEOptions":
        """Accept an ``ODEOptions``, a solver name, a dict of fields (:meth:`to_dict`), a list
        ``[solver, atol, rtol, steps]`` (how files of earlier versions stored them), or ``None``
        (-> ``default``)."""
        if value is None:
            return default
        if isinstance(value, ODEOptions):
            return value
        if isinstance(value, str):
            return default.with_(solver=value)
        if isinstance(value, dict):
            return default.with_(**value)
        if isinstance(value, (list, tuple)) and len(value) == 4:
            return cls(*value)
        raise TypeError(f"ODE options must be ODEOptions, a solver name or a dict, got {type(value).__name__}")


def _takes_time(net: nn.Module) -> bool:
    """Whether ``net.forward`` has the ``(t, x)`` signature (else it takes ``cat([x, t])``)."""
    params = [
        p
        for p in inspect.signature(net.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(params) >= 2


class VelocityField(nn.Module):
    """A velocity network seen as torchdyn's vector field ``f(t, x)``, with an NFE counter.

    Two network conventions are accepted, told apart by the number of required positional
    arguments of ``net.forward``:

    * ``net(t, x)`` (two or more), as torchcfm's ``UNetModelWrapper`` and
      :class:`torchcfm_local.MLP`; ``t`` is passed as a ``(B,)`` vector.
    * ``net(xt)`` (one), as torchcfm's ``MLP(dim, time_varying=True)``, which takes
      ``torch.cat([x, t[:, None]], -1)`` for flat ``x`` of shape ``(B, d)``.

    Args:
        net: the velocity network.
        takes_time: force the convention (``True``: ``net(t, x)``) instead of reading the
            signature, e.g. for a wrapper such as ``DistributedDataParallel(net)``.
        cond: conditioning ``(B, ...)`` passed as a third argument ``net(t, x, cond)``
            (``None``: unconditional call).
        guidance: classifier-free guidance scale ``s`` (``None``: off). With ``cond`` given, the
            field is ``v(null) + s * (v(cond) - v(null))``, the null conditioning being all zeros;
            both are evaluated in one network call on a doubled batch.

    A field never changes after construction apart from its evaluation counter ``nfe``: to
    integrate with a condition, or to count the evaluations of one solve, take a fresh view with
    :meth:`bind` (it shares the network), so concurrent solves never see each other's settings.
    """

    def __init__(self, net: nn.Module, takes_time: Optional[bool] = None, *,
                 cond: Optional[torch.Tensor] = None, guidance: Optional[float] = None):
        super().__init__()
        self.net = net
        self.takes_time = _takes_time(net) if takes_time is None else bool(takes_time)
        if cond is not None and not self.takes_time:
            raise ValueError("conditioning needs a network called as net(t, x, cond)")
        if guidance is not None and cond is None:
            raise ValueError("guidance needs a condition")
        self.cond, self.guidance = cond, guidance
        self.nfe = 0

    def bind(self, cond: Optional[torch.Tensor] = None, guidance: Optional[float] = None) -> "VelocityField":
        """A new field over the same network with this condition and guidance, its ``nfe`` at 0."""
        return VelocityField(self.net, self.takes_time, cond=cond, guidance=guidance)

    def forward(self, t: torch.Tensor, x: torch.Tensor, args=None) -> torch.Tensor:
        self.nfe += 1
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if not self.takes_time:
            return self.net(torch.cat([x, t[:, None]], dim=-1))
        if self.cond is None:
            return self.net(t, x)
        if self.guidance is None:
            return self.net(t, x, self.cond)
        both = self.net(torch.cat([t, t]), torch.cat([x, x]), torch.cat([self.cond, torch.zeros_like(self.cond)]))
        v_cond, v_null = both.chunk(2)
        return v_null + self.guidance * (v_cond - v_null)


def integrate(
    field: VelocityField,
    x: torch.Tensor,
    t0: float,
    t1: float,
    options: ODEOptions,
    node: "nn.Module | None" = None,
) -> torch.Tensor:
    """Integrate ``dx/dt = field(t, x)`` from ``t0`` to ``t1`` (``t1 < t0`` runs backward).

    Args:
        field: the vector field.
        x: initial state, shape ``(B, *shape)``.
        t0, t1: start and end time.
        options: solver, tolerances and fixed step count.
        node: a ``torchdyn.core.NeuralODE`` built by :func:`build_node` for ``field`` and
            ``options``, to reuse across calls; built here when ``None``.

    Returns:
        The state at ``t1``, shape ``(B, *shape)``.
    """
    if node is None:
        node = build_node(field, options)
    if options.adaptive:
        _, traj = node(x, torch.tensor([t0, t1], dtype=x.dtype, device=x.device))
    else:
        t_span = torch.linspace(t0, t1, options.steps + 1, dtype=x.dtype, device=x.device)
        _, traj = node(x, t_span, save_at=t_span[-1:])  # keep only the end state
    return traj[-1]


#: The error of an adaptive solve that met a NaN/Inf velocity.
NONFINITE_VELOCITY = "the velocity became NaN/Inf during an adaptive ODE solve (a diverged network or an exploding state)"


class _FiniteGuard(nn.Module):
    """``field`` that raises ``FloatingPointError`` on a NaN/Inf velocity. An adaptive solver fed NaN
    shrinks its step without end (torchdyn's dopri5 never returns), so the solve is stopped here."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field

    def forward(self, t: torch.Tensor, x: torch.Tensor, args=None) -> torch.Tensor:
        v = self.field(t, x)
        if not torch.isfinite(v).all():
            raise FloatingPointError(NONFINITE_VELOCITY)
        return v


def build_node(field: VelocityField, options: ODEOptions) -> nn.Module:
    """A torchdyn ``NeuralODE`` over ``field`` with the solver of ``options``; an adaptive solve
    raises ``FloatingPointError`` on a NaN/Inf velocity instead of never returning.

    torchdyn.core is imported here, not at module load: it pulls PyTorch Lightning (~3 s).
    """
    from torchdyn.core import NeuralODE

    if not options.adaptive:
        return NeuralODE(field, solver=make_solver(options.solver), sensitivity="autograd")
    return NeuralODE(_FiniteGuard(field), solver=make_solver(options.solver), sensitivity="autograd",
                     atol=options.atol, rtol=options.rtol)

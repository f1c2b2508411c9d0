"""Sampling presets: one ``"fast"`` and one ``"quality"`` setting for every sampler, and
:func:`sample`, which draws from a :class:`~torchcfm_local.LocalFlowMatching` (global flow
included) or a :class:`~torchcfm_local.DistilledSampler` by preset and reports the cost (NFE)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .distillation.sampler import DistilledSampler
from .reports import IntegrationStats
from .solvers import SOLVERS, ODEOptions

__all__ = ["SAMPLING_PRESETS", "check_preset", "preset_options", "sample"]

#: Named sampling settings for a :class:`~torchcfm_local.LocalFlowMatching`, applied per block:
#:
#: * ``"quality"``: adaptive dopri5 at atol = rtol = 1e-5 in every block, the reference against
#:   which fixed-step settings are judged.
#: * ``"fast"``: 4 midpoint steps per block (8 NFE per block), picked as the cheapest fixed-step
#:   setting whose samples stayed within the run-to-run noise of ``"quality"`` for both an LFM and a
#:   global flow on the 2-D benchmark (``benchmarks/bench_distill.py``; the solver rows of
#:   ``benchmarks/results/distill.md``, marked "(fast preset)"). A second-order method is needed: the
#:   trigonometric path is curved even inside a short local block, so Euler needs many more steps
#:   for the same error.
#:
#: A :class:`~torchcfm_local.DistilledSampler` has no ODE: both names select its single pass
#: through the students.
SAMPLING_PRESETS: dict[str, ODEOptions] = {
    "quality": ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5),
    "fast": ODEOptions(solver="midpoint", steps=4),
}


def check_preset(name: str) -> str:
    """Return ``name`` if it names a preset of :data:`SAMPLING_PRESETS`.

    Raises:
        ValueError: an unknown name (the message lists the presets).
    """
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"unknown sampling preset {name!r}; expected one of {sorted(SAMPLING_PRESETS)}")
    return name


def preset_options(preset: str) -> ODEOptions:
    """The per-block :class:`ODEOptions` of ``preset`` (``"fast"`` / ``"quality"``, see :data:`SAMPLING_PRESETS`).

    Raises:
        ValueError: an unknown preset name.
    """
    return SAMPLING_PRESETS[check_preset(preset)]


def sample(model, n: int, *, preset: Union[str, ODEOptions, dict] = "fast",
           generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, IntegrationStats]:
    """``n`` samples from any sampler with a named preset or explicit ODE options, and their cost.

    Args:
        model: a :class:`~torchcfm_local.LocalFlowMatching` or a :class:`~torchcfm_local.DistilledSampler`.
        n: number of samples.
        preset: ``"fast"``, ``"quality"`` (see :data:`SAMPLING_PRESETS`), or for an LFM explicit
            :class:`ODEOptions` / solver name / dict.
        generator: CPU generator of z.

    Returns:
        ``(samples (n, *shape), stats)``; ``stats.nfe`` is the network evaluations per sample.

    Raises:
        ValueError: a string that is neither a preset nor (for an LFM) a solver name.
        TypeError: ODE options for a :class:`~torchcfm_local.DistilledSampler`.
    """
    if isinstance(model, DistilledSampler):
        if not isinstance(preset, str):
            raise TypeError("a DistilledSampler takes preset 'fast' or 'quality' only (it has no ODE)")
        x = model.sample(n, generator=generator, preset=preset)
        return x, model.last_stats
    if isinstance(preset, str) and preset not in SOLVERS:
        preset = preset_options(preset)
    x = model.sample(n, ode=preset, generator=generator)
    return x, model.last_stats

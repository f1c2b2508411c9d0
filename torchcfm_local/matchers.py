r"""Local-block matchers: any torchcfm conditional matcher restricted to one OU block.

Convention (the same as torchcfm's): inside a block, time runs from ``t = 0`` on the *noise side*
(``x0``) to ``t = 1`` on the *data side* (``x1``). Sampling integrates every block from ``t = 0`` to
``t = 1``; encoding integrates from ``t = 1`` to ``t = 0``. (The paper runs each block from data to
noise; its ``t`` is our ``1 - t``.)

For block ``n`` with OU step ``h`` the pair is

.. math::
    x_1 \sim X_{n-1}, \qquad x_0 = e^{-h} x_1 + \sqrt{1 - e^{-2h}}\, z, \quad z \sim N(0, I),

with a fresh ``z`` every batch; the free block (``h = inf``) has ``x_0 = z``, independent of
``x_1``, which makes a one-block model exactly plain torchcfm flow matching from N(0, I).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .schedule import ou_step

__all__ = ["LocalBlockMatcher", "exact_ot_pairing", "default_matcher"]


def default_matcher():
    """torchcfm's linear path with ``sigma = 0``, ``ConditionalFlowMatcher(sigma=0)``.

    The reference LFM uses the trigonometric path for 2D, tabular data and images. With the
    default schedule the linear path had the better test NLL on five of the six density tasks of
    the schedule screen and on the standardized image patches, often by a wide margin
    (``benchmarks/results/README.md``, "Default OU schedule"). The policies keep the
    trigonometric path (:class:`~torchcfm_local.policy.PolicyRecipe`), the image recipe the
    reference's.
    """
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    return ConditionalFlowMatcher(sigma=0.0)


def exact_ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pair two equal-size batches by the exact squared-Euclidean OT plan.

    With uniform weights and equal sizes the optimal plan is a permutation (Birkhoff), found here
    by the Hungarian method (``scipy.optimize.linear_sum_assignment``): deterministic, no random
    state, and every sample used exactly once. torchcfm's ``OTPlanSampler`` instead draws pairs
    from the plan with numpy's global RNG, with replacement.

    Args:
        x0, x1: ``(B, *shape)`` each.

    Returns:
        ``(x0, x1[perm])``: row ``i`` of ``x0`` is paired with its OT partner.
    """
    from scipy.optimize import linear_sum_assignment

    if x0.shape != x1.shape:
        raise ValueError(f"OT pairing needs batches of equal shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    cost = torch.cdist(x0.reshape(x0.shape[0], -1).double(), x1.reshape(x1.shape[0], -1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.as_tensor(cols[rows.argsort()], device=x1.device)
    return x0, x1[perm]


def _is_exact_ot(matcher) -> bool:
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    return isinstance(matcher, ExactOptimalTransportConditionalFlowMatcher)


class LocalBlockMatcher:
    """A torchcfm matcher acting on one local block of the OU chain.

    It has torchcfm's method names and return values, so it drops into an existing training loop:
    ``t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)``. Here ``x1`` is a batch
    from the block's data side and ``x0`` is the standard normal draw ``z`` from which the noise
    side is built (``None`` draws it). Every other attribute is the wrapped matcher's.

    ``ExactOptimalTransportConditionalFlowMatcher`` is re-paired by :func:`exact_ot_pairing`
    (reproducible under ``torch.manual_seed``, no duplicated pairs) before its linear path.

    Args:
        matcher: a torchcfm ``ConditionalFlowMatcher`` (linear path), its trigonometric
            ``VariancePreservingConditionalFlowMatcher``, ``ExactOptimalTransportConditionalFlowMatcher``
            or any subclass.
        h: the block's OU step (``inf`` for the free block).
        t_beta: ``(a, b)`` to draw ``t ~ Beta(a, b)`` instead of ``U(0, 1)``. Our ``t`` runs from
            noise to data, so the paper's Beta(a, b) (data to noise) is ``t_beta=(b, a)`` here.
    """

    def __init__(self, matcher, h: float, t_beta: Optional[tuple[float, float]] = None):
        if not callable(getattr(matcher, "sample_location_and_conditional_flow", None)):
            raise TypeError(
                f"matcher must be a torchcfm ConditionalFlowMatcher (with sample_location_and_conditional_flow), "
                f"got {type(matcher).__name__}"
            )
        if not (h > 0):
            raise ValueError(f"OU step h must be > 0 (inf for the free block), got {h!r}")
        self.matcher = matcher
        self.h = float(h)
        self.t_beta = _check_beta(t_beta)
        self._exact_ot = _is_exact_ot(matcher)

    @property
    def free(self) -> bool:
        return math.isinf(self.h)

    def __getattr__(self, name):
        # Only reached for names not found on this object: delegate to the torchcfm matcher.
        if name == "matcher":
            raise AttributeError(name)
        return getattr(self.matcher, name)

    def noise_side(self, x1: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The OU partner ``x0 = e^{-h} x1 + sqrt(1 - e^{-2h}) z`` of a data-side batch ``x1``."""
        return ou_step(x1, self.h, z)

    def sample_time(self, batch_size: int, like: torch.Tensor, generator: Optional[torch.Generator] = None):
        """``t`` of shape ``(batch_size,)``: U(0, 1) or Beta(a, b), with ``like``'s dtype and device."""
        if self.t_beta is None:
            return torch.rand(batch_size, generator=generator, device=like.device, dtype=like.dtype)
        a, b = self.t_beta
        # Beta(a, b) as Ga(a) / (Ga(a) + Ga(b)); torch.distributions.Beta takes no generator.
        conc = torch.tensor([a, b], dtype=torch.float64, device=like.device).expand(batch_size, 2)
        g = torch._standard_gamma(conc, generator=generator) if generator is not None else torch._standard_gamma(conc)
        return (g[:, 0] / g.sum(dim=1)).to(like.dtype)

    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False):
        """torchcfm's method for a local block.

        Args:
            x0: ``z ~ N(0, I)``, shape ``(B, *shape)``, used to build the noise side; ``None``
                draws it.
            x1: data-side batch, ``(B, *shape)``.
            t: ``(B,)`` times; drawn from the block's time distribution when ``None``.
            return_noise: also return torchcfm's ``eps`` (only non-zero when ``sigma > 0``).

        Returns:
            ``(t, xt, ut)`` or ``(t, xt, ut, eps)``, exactly as torchcfm: ``xt`` on the path
            between the noise side (t = 0) and ``x1`` (t = 1), ``ut`` its conditional velocity.
        """
        if x0 is None:
            x0 = torch.randn_like(x1)
        elif x0.shape != x1.shape:
            raise ValueError(f"x0 (noise) and x1 (data) must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        noise_side = self.noise_side(x1, x0)
        if t is None and self.t_beta is not None:
            t = self.sample_time(x1.shape[0], x1)
        if self._exact_ot:
            from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

            noise_side, x1 = exact_ot_pairing(noise_side, x1)
            return ConditionalFlowMatcher.sample_location_and_conditional_flow(
                self.matcher, noise_side, x1, t, return_noise
            )
        return self.matcher.sample_location_and_conditional_flow(noise_side, x1, t, return_noise)

    def __repr__(self) -> str:
        kind = "free" if self.free else f"h={self.h:.4g}"
        return f"LocalBlockMatcher({type(self.matcher).__name__}, {kind})"


def _check_beta(t_beta):
    if t_beta is None:
        return None
    try:
        a, b = (float(v) for v in t_beta)
    except (TypeError, ValueError):
        raise ValueError(f"t_beta must be a pair (a, b) of positive numbers, got {t_beta!r}") from None
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"t_beta must be a pair (a, b) of positive finite numbers, got {t_beta!r}")
    return (a, b)

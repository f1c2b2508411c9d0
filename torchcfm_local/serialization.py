"""A :class:`~torchcfm_local.LocalFlowMatching` as a dict of tensors and plain data, and back.

The dict is what ``save`` writes with ``torch.save`` and ``load`` reads with
``weights_only=True``: no pickled code, so a model file cannot run anything when it is read.
Built-in networks (:data:`torchcfm_local.networks.NETWORKS`) and torchcfm matchers are stored
as specs and rebuilt; custom ones must be passed again when loading. The data standardization is
stored as its tensors (``None``, the identity, in files written before it existed). Blocks that
share one network (:mod:`torchcfm_local.shared`) store it once, under ``"shared"``, with empty
per-block weights; loading builds one network and its views (``None`` in older files).
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from .checkpoint import CheckpointError, header
from .networks import NETWORKS, network_spec
from .schedule import OUSchedule
from .shared import load_shared, saved_shared, shared_factory, shared_network
from .solvers import ODEOptions
from .standardize import Standardizer

__all__ = ["model_state", "model_from_state", "matcher_from_spec"]


def _matcher_spec(matcher) -> dict:
    """``{"class": torchcfm class name or None (custom), "sigma": float}``."""
    from torchcfm import conditional_flow_matching as cfm

    name = type(matcher).__name__
    return {"class": name if getattr(cfm, name, None) is type(matcher) else None,
            "sigma": float(getattr(matcher, "sigma", 0.0))}


def matcher_from_spec(spec: dict, source: str = "the state"):
    """A new torchcfm matcher from :func:`_matcher_spec`'s dict (``state["matcher"]`` of a model).

    Raises:
        ValueError: a custom matcher (not a torchcfm class), which cannot be rebuilt.
    """
    if spec.get("class") is None:
        raise ValueError(f"{source} was trained with a custom matcher; pass matcher= to load it")
    from torchcfm import conditional_flow_matching as cfm

    return getattr(cfm, spec["class"])(sigma=spec["sigma"])


def model_state(model, fit_state: Optional[dict] = None) -> dict:
    """Everything that rebuilds ``model``; ``fit_state``: the run state a fit checkpoint adds."""
    shared = saved_shared(model)
    return {
        **header("model"),
        "shape": list(model.shape),
        "schedule": model.schedule.to_list(),
        "matcher": _matcher_spec(model.matcher),
        "t_beta": list(model.t_beta) if model.t_beta else None,
        "cond_dim": model.cond_dim,
        "ode": model.ode.to_dict(),
        "nets": [network_spec(net) for net in model.nets],
        "weights": [{} if shared else net.state_dict() for net in model.nets],
        "shared": shared,
        "n_trained": model.n_trained,
        "standardize": model.standardizer.to_state(),
        "fit_state": fit_state,
    }


def _factory_from_specs(specs: list, source: str) -> Callable[[int], nn.Module]:
    missing = [n for n, spec in enumerate(specs, 1) if spec is None]
    if missing:
        raise ValueError(f"{source} uses custom velocity networks (blocks {missing}); "
                         "pass the velocity_factory used in training")

    def velocity_factory(n: int) -> nn.Module:
        spec = specs[n - 1]
        return NETWORKS[spec["type"]](**spec["config"])

    return velocity_factory


def model_from_state(cls, state: dict, *, velocity_factory=None, matcher=None, source: str = "the state"):
    """A ``cls`` (LocalFlowMatching) model from :func:`model_state`'s dict.

    Raises:
        CheckpointError: missing fields, a block count that differs from the schedule's, or
            weights that do not fit the networks.
        ValueError: custom networks or matcher that were not passed again.
    """
    try:
        shape, steps, specs = tuple(state["shape"]), state["schedule"], state["nets"]
        weights, n_trained = state["weights"], int(state["n_trained"])
        matcher_spec, ode = state["matcher"], state["ode"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source} is a torchcfm_local model file with missing fields: {err}") from err
    if matcher is None:
        matcher = matcher_from_spec(matcher_spec, source)
    shared = state.get("shared")
    if shared is not None:
        velocity_factory = shared_factory(shared, velocity_factory, source)
    elif velocity_factory is None:
        velocity_factory = _factory_from_specs(specs, source)
    model = cls(shape, OUSchedule.from_steps(steps), matcher, velocity_factory,
                t_beta=state.get("t_beta"), ode=ODEOptions.coerce(ode, ODEOptions()), cond_dim=state.get("cond_dim"))
    if len(weights) != model.n_blocks:
        raise CheckpointError(f"{source} holds {len(weights)} blocks but its schedule has {model.n_blocks}")
    if shared is not None or shared_network(model) is not None:  # the shared network, once
        load_shared(model, shared, source)
    else:
        for n, (net, sd) in enumerate(zip(model.nets, weights), 1):
            try:
                net.load_state_dict(sd)
            except RuntimeError as err:
                raise CheckpointError(f"{source}: block {n}'s weights do not fit its network: {err}") from err
    model.n_trained = n_trained
    model.standardizer = Standardizer.from_state(state.get("standardize"), model.dim, source)
    model.fit_state = state.get("fit_state")
    return model

"""Action-chunk policies in the Diffusion Policy / LeRobot style.

A policy sees the last ``n_obs_steps`` (To) observations and predicts ``horizon`` (H) actions,
of which ``n_action_steps`` (Ta) are executed:
``predict_action(obs_dict) -> {"action": (B, Ta, Da), "action_pred": (B, H, Da)}`` with
``obs_dict[key]`` of shape ``(B, To, D_key)``. Observations and actions are normalized per
dimension to [-1, 1] by ranges fitted on the demos (saved with the policy).

* :class:`FlowPolicy`: conditional flow matching on the normalized action chunk given the
  flattened normalized observation window; ``schedule=OUSchedule.global_flow()`` gives the global
  flow, any other schedule LFM. The condition passes unchanged through every block. ``shared=True``
  makes the blocks views of one network with a learned block embedding
  (:class:`~torchcfm_local.shared.SharedVelocity`), trained jointly by ``fit(pool="ou")``.
* :class:`RegressionPolicy`: an MLP trained with MSE on the same windows, a unimodal baseline.

A policy built from a :class:`~torchcfm_local.policy.recipe.PolicyRecipe` (as
:func:`~torchcfm_local.policy.cli.build_policy` does) keeps it as ``policy.recipe``, and its file
stores it; the schedule, matcher path and ODE are stored with the flow itself.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .._checks import is_int, positive_float, positive_int
from ..checkpoint import atomic_save, header, safe_load
from ..composer import LocalFlowMatching
from ..networks import MLP
from ..prediction import PREDICTIONS, block_networks, path_of
from ..reports import FitReport
from ..schedule import OUSchedule
from ..serialization import matcher_from_spec
from ..shared import SharedVelocity, default_embed_dim
from ..solvers import ODEOptions
from ..training.loop import OptimConfig, StepLoop
from ..training.steps import SAMPLING_TOL, choose_sampling_steps
from .demos import Demos, windows
from .normalizer import Normalizer
from .recipe import BLOCK_BATCHES, PolicyRecipe, check_free_share
from .unet1d import ConditionalUnet1D

__all__ = ["FlowPolicy", "RegressionPolicy", "load_policy", "DEFAULT_LFM_SCHEDULE", "POLICY_MLP"]

#: LFM schedule of a policy when none is given: the default recipe's (:class:`PolicyRecipe`), which
#: is the package's default ``OUSchedule()`` (two steps of 0.25 and the free block).
DEFAULT_LFM_SCHEDULE = PolicyRecipe().schedule("lfm")
#: RK4 steps of a policy's sampling ODE summed over its blocks (each block gets ``ceil(16 / N)``).
#: ``build_policy`` gives a recipe's global flow as many steps as its LFM blocks take together,
#: so that both sample at equal cost (with 3 blocks: 18 steps, 72 network evaluations per chunk).
POLICY_RK4_STEPS = 16
#: MLP settings of a ``network="mlp"`` policy (``network_config`` overrides them): SiLU with four
#: Fourier time frequencies, the defaults of :class:`PolicyRecipe`'s ``activation`` and ``n_freq``
#: (the package-wide MLP default, chosen on densities, was worse on policies: see that class);
#: saved policies rebuild the same network.
POLICY_MLP = {"activation": PolicyRecipe().activation, "n_freq": PolicyRecipe().n_freq}


class _ChunkPolicy(nn.Module):
    """What both policies share: observation checks, normalizers, windows, save/load."""

    def __init__(self, obs_dims: dict, action_dim: int, n_obs_steps: int = 2, horizon: int = 16,
                 n_action_steps: int = 8, recipe: Union[PolicyRecipe, dict, None] = None):
        super().__init__()
        if isinstance(recipe, dict):
            recipe = PolicyRecipe.from_dict(recipe)
        if recipe is not None and not isinstance(recipe, PolicyRecipe):
            raise TypeError(f"recipe must be a PolicyRecipe, a dict of its fields or None, got {type(recipe).__name__}")
        #: the recipe the policy was built with (provenance; ``None`` when built directly)
        self.recipe: Optional[PolicyRecipe] = recipe
        if not obs_dims or any(not is_int(d) or d < 1 for d in obs_dims.values()):
            raise ValueError(f"obs_dims must map observation keys to positive ints, got {obs_dims!r}")
        for name, value in (("action_dim", action_dim), ("n_obs_steps", n_obs_steps), ("horizon", horizon),
                            ("n_action_steps", n_action_steps)):
            positive_int(value, name)
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"horizon={horizon} must cover n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps}"
            )
        self.obs_dims = dict(obs_dims)
        self.action_dim, self.n_obs_steps, self.horizon, self.n_action_steps = action_dim, n_obs_steps, horizon, n_action_steps
        self.obs_normalizer: Optional[Normalizer] = None
        self.action_normalizer: Optional[Normalizer] = None

    @property
    def cond_dim(self) -> int:
        return self.n_obs_steps * sum(self.obs_dims.values())

    def _base_config(self) -> dict:
        return {"obs_dims": self.obs_dims, "action_dim": self.action_dim, "n_obs_steps": self.n_obs_steps,
                "horizon": self.horizon, "n_action_steps": self.n_action_steps,
                "recipe": None if self.recipe is None else self.recipe.to_dict()}

    # ------------------------------------------------------------------ data
    def _training_data(self, demos: Demos) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized ``(cond (N, To * Dobs), actions (N, H, Da))``; fits the normalizers."""
        self._check_demos(demos)
        keys = list(self.obs_dims)
        self.obs_normalizer = Normalizer.fit(torch.from_numpy(np.concatenate([demos.obs[k] for k in keys], axis=1)))
        self.action_normalizer = Normalizer.fit(torch.from_numpy(demos.action))
        obs_w, act_w = windows(demos, keys, self.n_obs_steps, self.horizon)
        cond = self.obs_normalizer.normalize(obs_w).reshape(obs_w.shape[0], -1)
        return cond.float(), self.action_normalizer.normalize(act_w).float()

    def _check_demos(self, demos: Demos) -> None:
        if demos.action.shape[1] != self.action_dim:
            raise ValueError(f"the demos' actions have {demos.action.shape[1]} dims; this policy has action_dim={self.action_dim}")
        for key, dim in self.obs_dims.items():
            if key not in demos.obs:
                raise ValueError(f"the demos lack observation key {key!r}; they have {sorted(demos.obs)}")
            if demos.obs[key].shape[1] != dim:
                raise ValueError(f"demo observation {key!r} has {demos.obs[key].shape[1]} dims; the policy expects {dim}")

    def _cond(self, obs_dict: dict) -> torch.Tensor:
        """Check ``obs_dict`` and return the normalized, flattened condition ``(B, To * Dobs)``."""
        if self.obs_normalizer is None:
            raise RuntimeError("the policy is not trained; call fit(demos) or load a trained policy")
        if not isinstance(obs_dict, dict):
            raise TypeError(f"obs_dict must be a dict of (B, To, D) arrays, got {type(obs_dict).__name__}")
        missing = [k for k in self.obs_dims if k not in obs_dict]
        if missing:
            raise ValueError(f"obs_dict lacks keys {missing}; the policy needs {list(self.obs_dims)}")
        parts, batch = [], None
        for key, dim in self.obs_dims.items():
            value = torch.as_tensor(np.asarray(obs_dict[key]) if not isinstance(obs_dict[key], torch.Tensor) else obs_dict[key])
            if value.dim() != 3 or value.shape[1:] != (self.n_obs_steps, dim):
                raise ValueError(
                    f"obs_dict[{key!r}] must have shape (B, {self.n_obs_steps}, {dim}) (B, To, D), got {tuple(value.shape)}"
                )
            if batch is not None and value.shape[0] != batch:
                raise ValueError(f"obs_dict entries disagree on the batch size: {batch} vs {value.shape[0]} for {key!r}")
            batch = value.shape[0]
            parts.append(value.double())
        obs = torch.cat(parts, dim=-1)
        if not torch.isfinite(obs).all():
            raise ValueError("obs_dict contains NaN or Inf")
        return self.obs_normalizer.normalize(obs).reshape(batch, -1).float()

    def _chunk(self, pred_normalized: torch.Tensor) -> dict:
        pred = self.action_normalizer.unnormalize(pred_normalized.double()).float()
        start = self.n_obs_steps - 1
        return {"action": pred[:, start : start + self.n_action_steps], "action_pred": pred}

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file: configuration, normalizers and weights (read back by :func:`load_policy`)."""
        if self.obs_normalizer is None:
            raise RuntimeError("save a trained policy (call fit first)")
        atomic_save({**header("policy"), "class": type(self).__name__, "config": self._config(),
                     "normalizers": {"obs": self.obs_normalizer.state_dict(), "action": self.action_normalizer.state_dict()},
                     "model": self._model_state()}, path)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def batches_per_block(self, demos: Demos, epochs: float, batch_size: int, block_batch: Optional[str] = None) -> int:
        """Optimizer steps per block that :meth:`fit` takes for ``epochs`` passes over the demos'
        windows (one window per demo step) in batches of ``batch_size`` (capped at the windows;
        ``block_batch="split"``: of ``batch_size / n_blocks``, see :class:`PolicyRecipe`; default:
        the policy's recipe's)."""
        n_windows = int(demos.action.shape[0])
        block_batch = (self.recipe or PolicyRecipe()).block_batch if block_batch is None else block_batch
        return _epochs_to_batches(epochs, n_windows, _block_batch_size(batch_size, n_windows, self.n_blocks,
                                                                       block_batch), self.n_blocks)

    @property
    def n_blocks(self) -> int:
        """Networks trained one after the other (1 unless LFM)."""
        return 1


def _epochs_to_batches(epochs: float, n_windows: int, batch_size: int, n_blocks: int) -> int:
    """Batches per block so that all blocks together see ``epochs`` passes over the windows."""
    return max(1, math.ceil(positive_float(epochs, "epochs") * n_windows / batch_size / n_blocks))


def _block_batch_size(batch_size: int, n_windows: int, n_blocks: int, block_batch: str) -> int:
    """Windows per optimizer step of each block: ``batch_size`` (``"same"``) or ``ceil(batch_size /
    n_blocks)`` (``"split"``), capped at ``n_windows``."""
    if block_batch not in BLOCK_BATCHES:
        raise ValueError(f"block_batch must be one of {BLOCK_BATCHES}, got {block_batch!r}")
    per_block = math.ceil(batch_size / n_blocks) if block_batch == "split" else batch_size
    return min(per_block, n_windows)


def _free_share_split(total: int, n_blocks: int, free_share: float) -> list[int]:
    """``total`` batches over ``n_blocks``: ``free_share`` of them to the last (free) block, the rest
    split equally over the others (every block at least one)."""
    check_free_share(free_share)
    free = min(max(1, round(total * free_share)), total - (n_blocks - 1))
    rest = total - free
    return [rest // (n_blocks - 1) + (i < rest % (n_blocks - 1)) for i in range(n_blocks - 1)] + [free]


class FlowPolicy(_ChunkPolicy):
    """Conditional flow-matching policy; LFM (default schedule) or global (``OUSchedule.global_flow()``).

    Args:
        obs_dims: observation key -> feature dimension (the keys the policy reads, in order).
        action_dim: Da.
        n_obs_steps, horizon, n_action_steps: To, H, Ta (Diffusion Policy's 2, 16, 8).
        schedule: the OU schedule (default :data:`DEFAULT_LFM_SCHEDULE`).
        network: ``"unet"`` (:class:`ConditionalUnet1D`) or ``"mlp"`` (:class:`~torchcfm_local.MLP`
            with :data:`POLICY_MLP` unless ``network_config`` overrides it).
        network_config: keyword arguments of the network, the same for every block (of the shared
            network's core with ``shared``).
        matcher: a torchcfm matcher without minibatch OT (default: the default recipe's path, the
            trigonometric one; the package-wide default, the linear path, was worse on policies).
        ode: sampling ODE options (default: RK4 with :data:`POLICY_RK4_STEPS` steps over all blocks).
        guidance: classifier-free guidance scale at sampling (``None``: off; needs
            ``cond_dropout > 0`` in :meth:`fit`).
        recipe: the :class:`PolicyRecipe` the policy was built from, kept as provenance (the
            arguments above are what the policy uses).
        shared: ``True``: all blocks are views of one :class:`~torchcfm_local.shared.SharedVelocity`
            whose core is the network above with ``k = min(N, 16)`` more conditioning features
            (block n's embedding row follows the observation window and the presence flag). Such a
            policy trains with ``fit(..., pool="ou")``, all blocks at once; its file stores the
            network once. Default ``False``: a network per block.
        prediction: ``"velocity"`` (default: every block network outputs the velocity) or
            ``"data"``: block 1's network (the global flow's only one) outputs the action chunk at
            the data end of its path, which :class:`~torchcfm_local.prediction.DataPrediction`
            turns into the velocity of ``matcher``'s path (torchcfm's linear or trigonometric
            matcher with sigma = 0); the other blocks keep predicting the velocity
            (:func:`~torchcfm_local.prediction.block_networks`).
    """

    def __init__(self, obs_dims: dict, action_dim: int, *, n_obs_steps: int = 2, horizon: int = 16,
                 n_action_steps: int = 8, schedule: Optional[OUSchedule] = None, network: str = "unet",
                 network_config: Optional[dict] = None, matcher=None, ode=None, guidance: Optional[float] = None,
                 recipe: Union[PolicyRecipe, dict, None] = None, shared: bool = False, prediction: str = "velocity"):
        super().__init__(obs_dims, action_dim, n_obs_steps, horizon, n_action_steps, recipe)
        if network not in ("unet", "mlp"):
            raise ValueError(f"network must be 'unet' or 'mlp', got {network!r}")
        if not isinstance(shared, bool):
            raise ValueError(f"shared must be True or False, got {shared!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if shared and prediction != "velocity":
            raise ValueError("prediction='data' works with a network per block, not with shared=True")
        self.network, self.network_config, self.shared = network, dict(network_config or {}), shared
        self.guidance, self.prediction = guidance, prediction
        schedule = schedule or DEFAULT_LFM_SCHEDULE
        steps = math.ceil(POLICY_RK4_STEPS / schedule.n_blocks)
        self.ode = ODEOptions.coerce(ode, ODEOptions(solver="rk4", steps=steps))
        matcher = PolicyRecipe().matcher() if matcher is None else matcher
        self._path = path_of(matcher) if prediction == "data" else None
        self.flow = LocalFlowMatching((horizon, action_dim), schedule, matcher, self._factory(schedule.n_blocks),
                                      ode=self.ode, cond_dim=self.cond_dim)

    def _factory(self, n_blocks: int):
        """The velocity factory: a new network per block, or the block views of one shared network."""
        features = self.cond_dim + 1  # the composer appends a presence flag
        k = default_embed_dim(n_blocks) if self.shared else 0

        def core(n=None):
            if self.network == "unet":
                return ConditionalUnet1D(self.action_dim, self.horizon, features + k, **self.network_config)
            return MLP(self.horizon * self.action_dim, cond_features=features + k,
                       **{**POLICY_MLP, **self.network_config})

        return block_networks(SharedVelocity(core(), n_blocks, k).block if self.shared else core, self.prediction,
                              self._path)

    def fit(self, demos: Demos, *, epochs: Optional[float] = None, batches_per_block: Optional[int] = None,
            batch_size: int = 256, lr: Optional[float] = None, cond_dropout: float = 0.0,
            free_share: Optional[float] = None, block_batch: Optional[str] = None, **fit_kwargs) -> FitReport:
        """Train on the demos' windows. Give ``epochs`` (passes over all windows, spread evenly over
        the blocks) or ``batches_per_block``. ``free_share`` (in (0, 1); LFM only): the free block
        (the last) gets this share of all the blocks' batches and the others split the rest
        equally, the total unchanged; ``None``: every block the same. ``block_batch``: ``"same"``
        (every block takes ``batch_size`` windows per step) or ``"split"`` (``ceil(batch_size /
        N)``; with ``epochs``, each block then takes the steps of a one-block flow). Other keywords go to
        :meth:`LocalFlowMatching.fit` (``seed``, ``checkpoint_dir``, ``resume``, ``lr_decay``, ``grad_clip``, ``progress``, ``pool``, ...;
        a ``shared`` policy needs ``pool="ou"`` and trains its blocks jointly, as many steps and rows in all).
        ``lr``, ``block_batch`` and ``ema_decay``: by default the policy's recipe's
        (:class:`PolicyRecipe`'s defaults when it has none), so that a policy trained from Python
        and one trained by ``lfm-policy`` get the same recipe."""
        recipe = self.recipe or PolicyRecipe()
        lr = recipe.lr if lr is None else lr
        block_batch = recipe.block_batch if block_batch is None else block_batch
        fit_kwargs.setdefault("ema_decay", recipe.optim.ema_decay)
        cond, actions = self._training_data(demos)
        batch_size = _block_batch_size(batch_size, actions.shape[0], self.n_blocks, block_batch)
        if (epochs is None) == (batches_per_block is None):
            raise ValueError("give exactly one of epochs and batches_per_block")
        if epochs is not None:
            batches_per_block = _epochs_to_batches(epochs, actions.shape[0], batch_size, self.flow.n_blocks)
        if free_share is not None and self.flow.n_blocks > 1:
            batches_per_block = _free_share_split(batches_per_block * self.flow.n_blocks, self.flow.n_blocks,
                                                  free_share)
        # the action normalizer already maps onto [-1, 1]; the push of the windows through the last
        # block would only report how Gaussian they end up, which a policy never reads
        fit_kwargs = {"standardize": None, "encode_final_pool": False, **fit_kwargs}
        return self.flow.fit(actions, cond=cond, cond_dropout=cond_dropout, batches_per_block=batches_per_block,
                             batch_size=batch_size, lr=lr, **fit_kwargs)

    @torch.no_grad()
    def predict_action(self, obs_dict: dict, generator: Optional[torch.Generator] = None,
                       guidance: Optional[float] = None) -> dict:
        """``obs_dict[key]``: ``(B, To, D_key)`` -> ``{"action": (B, Ta, Da), "action_pred": (B, H, Da)}``."""
        cond = self._cond(obs_dict)
        z = torch.randn((cond.shape[0], self.horizon, self.action_dim), generator=generator)
        scale = self.guidance if guidance is None else guidance
        pred = self.flow.decode(z, cond=cond, guidance=scale, ode=self.ode)
        return self._chunk(pred)

    def choose_sampling_steps(self, demos: Demos, tol: float = SAMPLING_TOL, seed: int = 0) -> list:
        """Sample from now on with RK4 steps per block picked by measured error: the fewest whose
        result stays within ``tol`` times each block's OU noise scale of a fine solve
        (:func:`~torchcfm_local.training.steps.choose_sampling_steps`), probed on the conditions
        of ``demos``' windows (normally the training demos). Sets :attr:`ode` (saved with the
        policy) and returns one :class:`~torchcfm_local.training.steps.StepChoice` per block,
        block 1 first."""
        if self.obs_normalizer is None:
            raise RuntimeError("the policy is not trained; call fit(demos) or load a trained policy")
        self._check_demos(demos)
        obs_w, _ = windows(demos, list(self.obs_dims), self.n_obs_steps, self.horizon)
        cond = self.obs_normalizer.normalize(obs_w).reshape(obs_w.shape[0], -1).float()
        self.ode, choices = choose_sampling_steps(self.flow, tol, cond=cond, seed=seed)
        return choices

    @property
    def n_blocks(self) -> int:
        return self.flow.n_blocks

    def _config(self) -> dict:
        return {**self._base_config(), "network": self.network, "network_config": self.network_config,
                "guidance": self.guidance, "ode": self.ode.to_dict(), "shared": self.shared,
                "prediction": self.prediction}

    def _model_state(self) -> dict:
        return self.flow.to_state()


class RegressionPolicy(_ChunkPolicy):
    """MLP from the observation window to the action chunk, trained with MSE (a unimodal baseline)."""

    def __init__(self, obs_dims: dict, action_dim: int, *, n_obs_steps: int = 2, horizon: int = 16,
                 n_action_steps: int = 8, width: int = 256, depth: int = 3,
                 recipe: Union[PolicyRecipe, dict, None] = None):
        super().__init__(obs_dims, action_dim, n_obs_steps, horizon, n_action_steps, recipe)
        self.width, self.depth = width, depth
        layers, fan_in = [], self.cond_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.SiLU()]
            fan_in = width
        self.net = nn.Sequential(*layers, nn.Linear(fan_in, horizon * action_dim))

    def fit(self, demos: Demos, *, epochs: float = 100, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
            progress: bool = True, weight_decay: float = 0.0, warmup: int = 0, lr_decay: Optional[str] = None,
            ema_decay: Optional[float] = None, callback=None, pool: Optional[str] = None,
            free_share: Optional[float] = None, block_batch: Optional[str] = None) -> list[float]:
        """Fit the MLP by MSE on the demos' windows with :class:`~torchcfm_local.training.loop.StepLoop`:
        ``epochs`` passes over the windows in minibatches of ``batch_size`` windows
        ``(cond (B, To * Dobs), actions (B, H * Da))`` drawn with replacement from a generator
        seeded with ``seed``. The optimizer is Adam at a constant ``lr`` unless the options of
        :class:`~torchcfm_local.training.loop.OptimConfig` say otherwise (``weight_decay > 0``:
        AdamW; ``warmup`` batches; ``lr_decay="cosine"``; ``ema_decay``: the EMA of the weights
        becomes the final weights). ``callback(step, loss)`` runs after every optimizer step.
        ``pool``, ``free_share`` and ``block_batch`` are ignored: flow options, accepted so that
        ``recipe.fit_options()`` fits every policy. Returns the loss of every step.

        Raises:
            ValueError: bad ``epochs``, ``batch_size`` or optimizer options; demos that do not fit the policy.
            FloatingPointError: the loss became NaN/Inf.
        """
        config = OptimConfig(lr=lr, weight_decay=weight_decay, warmup=warmup, lr_decay=lr_decay, ema_decay=ema_decay)
        cond, actions = self._training_data(demos)
        target = actions.reshape(actions.shape[0], -1)
        batch_size = min(positive_int(batch_size, "batch_size"), target.shape[0])
        steps = _epochs_to_batches(epochs, target.shape[0], batch_size, 1)
        gen = torch.Generator().manual_seed(seed)

        def loss_fn(step: int) -> torch.Tensor:
            idx = torch.randint(0, target.shape[0], (batch_size,), generator=gen)
            return torch.mean((self.net(cond[idx]) - target[idx]) ** 2)

        return StepLoop(self.net, steps, config, desc="regression", progress=progress).run(loss_fn, callback)

    @torch.no_grad()
    def predict_action(self, obs_dict: dict, generator: Optional[torch.Generator] = None, guidance=None) -> dict:
        cond = self._cond(obs_dict)
        return self._chunk(self.net(cond).reshape(-1, self.horizon, self.action_dim))

    def _config(self) -> dict:
        return {**self._base_config(), "width": self.width, "depth": self.depth}

    def _model_state(self) -> dict:
        return self.net.state_dict()


def load_policy(path: Union[str, os.PathLike], map_location="cpu") -> _ChunkPolicy:
    """Read a policy written by ``policy.save(path)``.

    Raises:
        FileNotFoundError: no file at ``path`` (nothing, or a directory).
        PermissionError: the file cannot be read.
        CheckpointError (a ValueError): corrupt, truncated or damaged (checksum), not ours, or
            another kind of file (a model, a distilled sampler).
        ValueError: a policy class this version does not know.
    """
    state = safe_load(path, "policy", map_location)
    cls = {"FlowPolicy": FlowPolicy, "RegressionPolicy": RegressionPolicy}.get(state.get("class"))
    if cls is None:
        raise ValueError(f"{path} holds an unknown policy class {state.get('class')!r}")
    config = dict(state["config"])
    if cls is FlowPolicy:
        config["ode"] = ODEOptions.coerce(config.pop("ode"), ODEOptions())
        flow_state = state["model"]
        schedule = OUSchedule.from_steps(flow_state["schedule"])
        matcher = matcher_from_spec(flow_state["matcher"], str(path))  # data prediction reads its path
        obs_dims, action_dim = config.pop("obs_dims"), config.pop("action_dim")
        policy = cls(obs_dims, action_dim, schedule=schedule, matcher=matcher, **config)
        policy.flow = LocalFlowMatching.from_state(flow_state, velocity_factory=policy.flow.velocity_factory,
                                                   source=str(path))
    else:
        obs_dims, action_dim = config.pop("obs_dims"), config.pop("action_dim")
        policy = cls(obs_dims, action_dim, **config)
        policy.net.load_state_dict(state["model"])
    policy.obs_normalizer = Normalizer.from_state(state["normalizers"]["obs"])
    policy.action_normalizer = Normalizer.from_state(state["normalizers"]["action"])
    return policy

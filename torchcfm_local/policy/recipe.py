"""The training recipe of a policy: every knob, its default and how it reaches the policy, in one place.

``lfm-policy train`` and ``benchmarks/bench_policy.py`` both read their flags and defaults from
:class:`PolicyRecipe` (:meth:`PolicyRecipe.add_arguments` / :meth:`PolicyRecipe.from_args`), pass
it to :func:`~torchcfm_local.policy.cli.build_policy` and train with
:meth:`PolicyRecipe.fit_options`; the policy file stores it (``policy.recipe`` after
:func:`~torchcfm_local.policy.load_policy`). Changing a default here changes it for both.

The defaults are the recipe the policy benchmarks were first measured with, changed only on the
evidence of a multi-seed screen (so far the learning rate, the schedule, the LFM blocks' batch
and the EMA; ``benchmarks/results/README.md``, "Policy recipe"). They are neither the paper's
robotics recipe (h0 = 0.15-0.2, rho = 1-1.25, the linear path) nor Diffusion Policy's (AdamW 1e-4
with weight decay, cosine decay after a warm-up, EMA), though they share its EMA.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .._checks import is_int, positive_float
from ..networks import ACTIVATIONS
from ..prediction import PATHS, PREDICTIONS  # PATHS: the ``path`` values
from ..schedule import OUSchedule
from ..training.loop import OptimConfig

__all__ = ["PolicyRecipe", "PATHS", "NETWORKS", "LR_DECAYS", "POOLS", "BLOCK_BATCHES"]

#: ``network`` values of a flow policy (the regression baseline is always an MLP).
NETWORKS = ("mlp", "unet")
#: ``lr_decay`` values.
LR_DECAYS = ("none", "cosine")
#: ``pool`` values: where an LFM block's data side comes from (``LocalFlowMatching.fit``'s ``pool``).
POOLS = ("pushforward", "ou")
#: ``block_batch`` values: every LFM block takes ``batch_size`` windows per step, or ``batch_size / N``.
BLOCK_BATCHES = ("same", "split")


#: fields added to the recipe with a default that differs from what earlier versions did: the value a
#: recipe written before the field existed was trained with (:meth:`PolicyRecipe.from_dict`)
BEFORE_FIELD = {"block_batch": "same"}


def _optional_float(text: str) -> Optional[float]:
    """``"none"`` -> None, else a float (the command-line type of ``--ema-decay``)."""
    return None if text.strip().lower() in ("none", "off") else float(text)


def _bool(text: str) -> bool:
    """``"true"/"yes"/"on"/"1"`` -> True, ``"false"/"no"/"off"/"0"`` -> False (the type of ``--shared``)."""
    word = str(text).strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def check_free_share(value) -> None:
    """``free_share`` is ``None`` or a float in (0, 1); else ValueError."""
    if value is not None and not (isinstance(value, float) and 0 < value < 1):
        raise ValueError(f"free_share must be a float in (0, 1) or None, got {value!r}")


def _knob(default, help: str, type=None, choices=None):
    """A recipe field: its default, its command-line help, its type and allowed values."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass(frozen=True)
class PolicyRecipe:
    """How a policy is built and trained. Every field is one command-line flag (``h0`` -> ``--h0``,
    ``batch_size`` -> ``--batch-size``).

    Attributes:
        h0: first OU step of the LFM schedule ``OUSchedule(h0, rho, blocks)``. Default 0.25.
        rho: growth factor of the LFM steps, ``h_k = h0 * rho^(k-1)``. Default 1.
        blocks: LFM blocks N, the free block included. The global flow is always one block whose
            network is widened until it has the LFM policy's parameter count. Default 3: with
            ``h0`` and ``rho`` the package's default schedule ``OUSchedule()`` (two steps of 0.25
            and the free block), which was better than or level with the paper's CIFAR-10 schedule
            (0.3, 1.1, 4 blocks) at every checkpoint on the point, Lift and Can tasks
            (``benchmarks/results/README.md``, "Policy recipe").
        path: probability path inside each block: ``"trig"`` (torchcfm's
            ``VariancePreservingConditionalFlowMatcher(sigma=0)``, the policies' default, better
            for LFM on the point task in ``benchmarks/results/policy_screen``) or ``"linear"``
            (``ConditionalFlowMatcher(sigma=0)``, the paper's choice for robotics and the
            default of ``LocalFlowMatching``).
        network: velocity network of a flow policy: ``"mlp"`` or ``"unet"`` (1D temporal U-Net).
        activation: activation of a flow policy's MLP (``network="mlp"``; the U-Net and the
            regression MLP keep theirs). Default ``"silu"``.
        n_freq: Fourier time frequencies of a flow policy's MLP (``[t, sin(2^k pi t), cos(2^k pi t)]``,
            k < n_freq). Default 4. With ``activation`` the policy benchmarks' first network; the
            package-wide MLP default (Softplus(20), one frequency), chosen on densities, was worse
            for both flow policies in the recipe screen (``benchmarks/results/README.md``).
        width: width of each LFM block (MLP width; the U-Net's largest channel count, a multiple
            of 32) and of the regression MLP.
        epochs: passes over the demo windows, spread evenly over the blocks (equal epochs for
            every method).
        batch_size: windows per optimizer step (capped at the number of windows); an LFM block's
            is ``batch_size / N`` with ``block_batch="split"``.
        lr: peak learning rate. Default 3e-3: chosen when each of LFM's N blocks took 1/N of the
            optimizer steps (``block_batch="same"``); at 1e-3 the LFM policies were still far from
            converged, and with split batches 1e-3 was slower for both methods too. The
            evidence is the 3-seed recipe screen on the point task and its confirmation on Lift
            (``benchmarks/results/policy_screen/screen.md`` and ``policy_screen_lift/screen.md``):
            3e-3 was the global flow's best rate there (or as good as 1e-3) and LFM's best at
            the last checkpoint.
        weight_decay: decoupled weight decay; AdamW when > 0, else Adam.
        warmup: batches of linear learning-rate warm-up at the start of every block.
        lr_decay: ``"none"`` (constant) or ``"cosine"`` (to 0 over every block).
        ema_decay: ``None`` (off) or a decay in (0, 1): an exponential moving average of each
            block's weights becomes its final weights (its decay warms up over the first steps,
            :class:`~torchcfm_local.training.loop.OptimConfig`). Default 0.999, as in Diffusion
            Policy; chosen with ``block_batch="split"`` (below), whose smaller batches give noisier
            steps.
        pool: where each LFM block's data side comes from (``LocalFlowMatching.fit``'s ``pool``):
            ``"pushforward"`` (default, the paper's Algorithm 1: the demos pushed through the
            blocks trained before it, one block after another) or ``"ou"`` (the exact OU marginal
            of the demos: the blocks do not depend on each other). A flow option only: the
            regression baseline ignores it, and the global flow's one block is the same either way.
        shared: ``True``: the LFM policy's blocks are views of one network with a learned block
            embedding (:class:`~torchcfm_local.shared.SharedVelocity`), trained jointly; it needs
            ``pool="ou"``. :func:`~torchcfm_local.policy.cli.build_policy` widens that network
            to the parameter count of the separate blocks, so ``width`` still sets the budget.
            Default ``False`` (a network per block). The global flow and the regression baseline
            ignore it.
        free_share: ``None`` (default: every LFM block gets the same number of batches) or a
            share in (0, 1) of LFM's batches for the free (last) block, the others splitting the
            rest; the total stays that of ``epochs``. The free block carries the mode choice (its
            data side is only partly noised), but giving it more than 1/N was no better in the
            recipe screen (``benchmarks/results/README.md``).
        block_batch: ``"same"`` (every LFM block takes ``batch_size`` windows per optimizer step)
            or ``"split"`` (each of the N blocks takes ``ceil(batch_size / N)``). At equal epochs
            the blocks share the passes over the windows, so with ``"same"`` each block takes 1/N
            of the global flow's optimizer steps; with ``"split"`` each takes as many as the global
            flow, and all of them together still see the same windows. The global flow (one
            block) and the regression baseline are the same either way. Default ``"split"``:
            with the EMA it was LFM's best recipe on the point, Lift and Can tasks (3 seeds each,
            ``benchmarks/results/policy_screen*/screen.md``), mostly at the early checkpoints,
            where LFM's blocks had been step-starved. Its cost: at equal epochs LFM's training
            takes more wall time than with ``"same"`` (smaller batches, as many steps per block
            as the global flow).
        prediction: what block 1's network outputs, in both flows: ``"velocity"`` (default) or
            ``"data"``, the action chunk at the data end of its path, turned into the path's
            velocity (:mod:`torchcfm_local.prediction`). Block 1 is the global flow's only block
            and the one LFM block whose data side is the demos; LFM's other blocks predict the
            velocity either way. Not with ``shared``. The regression baseline ignores it.
    """

    h0: float = _knob(0.25, "first OU step of the LFM schedule (paper, robotics: 0.15-0.2)", float)
    rho: float = _knob(1.0, "growth factor of the LFM steps, h_k = h0 * rho^(k-1) (paper, robotics: 1-1.25)", float)
    blocks: int = _knob(3, "LFM blocks, the free one included (the global flow: 1 block, equal parameters)", int)
    path: str = _knob("trig", "probability path in each block: trig (variance preserving) or linear (OT)",
                      choices=PATHS)
    network: str = _knob("mlp", "velocity network of the flow policies", choices=NETWORKS)
    activation: str = _knob("silu", "activation of the flow policies' MLP", choices=tuple(sorted(ACTIVATIONS)))
    n_freq: int = _knob(4, "Fourier time frequencies of the flow policies' MLP", int)
    width: int = _knob(128, "LFM block width (the global network is widened to equal parameters)", int)
    epochs: float = _knob(100.0, "passes over the demo windows, spread over the blocks", float)
    batch_size: int = _knob(256, "windows per optimizer step", int)
    lr: float = _knob(3e-3, "peak learning rate", float)
    weight_decay: float = _knob(0.0, "AdamW weight decay (0: Adam)", float)
    warmup: int = _knob(0, "batches of linear learning-rate warm-up at the start of every block", int)
    lr_decay: str = _knob("none", "learning-rate decay over every block", choices=LR_DECAYS)
    ema_decay: Optional[float] = _knob(0.999, "EMA decay of the weights (none: off)", _optional_float)
    pool: str = _knob("pushforward", "data side of each LFM block: pushforward (through the trained blocks) or ou "
                      "(exact OU marginal, blocks independent)", choices=POOLS)
    shared: bool = _knob(False, "true: one network with a block embedding for all LFM blocks, as many parameters "
                         "as the separate blocks (needs --pool ou)", _bool)
    free_share: Optional[float] = _knob(None, "share of LFM's batches for the free (last) block, e.g. 0.5 (none: "
                                        "equal shares)", _optional_float)
    prediction: str = _knob("velocity", "what block 1's network predicts (the global flow's only block): velocity, or "
                            "data (the action chunk at its path's data end, turned into the path's velocity)",
                            choices=PREDICTIONS)
    block_batch: str = _knob("split", "windows per step of each LFM block: same (batch_size) or split (batch_size / "
                             "blocks: every block takes the global flow's optimizer steps)", choices=BLOCK_BATCHES)

    def __post_init__(self):
        positive_float(self.h0, "h0")
        positive_float(self.rho, "rho")
        positive_float(self.epochs, "epochs")
        for name in ("blocks", "width", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not is_int(self.n_freq) or self.n_freq < 0:
            raise ValueError(f"n_freq must be an int >= 0, got {self.n_freq!r}")
        for name, allowed in (("path", PATHS), ("network", NETWORKS), ("lr_decay", LR_DECAYS), ("pool", POOLS),
                              ("activation", tuple(sorted(ACTIVATIONS))), ("block_batch", BLOCK_BATCHES),
                              ("prediction", PREDICTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.network == "unet" and self.width % 32:
            raise ValueError(f"a U-Net's width must be a multiple of 32, got {self.width}")
        if not isinstance(self.shared, bool):
            raise ValueError(f"shared must be True or False, got {self.shared!r}")
        if self.shared and self.pool != "ou":
            raise ValueError(f"shared=True needs pool='ou', got pool={self.pool!r}: blocks that share one network "
                             "are trained jointly, each on the OU marginal of the demos (with the pushforward pool, "
                             "training block n would move the weights of the blocks trained before it)")
        if self.shared and self.prediction != "velocity":
            raise ValueError("prediction='data' works with a network per LFM block, not with shared=True")
        check_free_share(self.free_share)
        self.optim  # checks lr, weight_decay, warmup and ema_decay
        OUSchedule(self.h0, self.rho, self.blocks)  # checks that the steps stay finite

    @property
    def optim(self) -> OptimConfig:
        """The optimizer settings of the recipe (as every trainer's step loop reads them)."""
        ema = None if self.ema_decay is None else float(self.ema_decay)
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, lr_decay=self.decay, warmup=self.warmup,
                           ema_decay=ema)

    @property
    def decay(self) -> Optional[str]:
        """``lr_decay`` as the trainers take it: ``None`` or ``"cosine"``."""
        return None if self.lr_decay == "none" else self.lr_decay

    def schedule(self, method: str = "lfm") -> OUSchedule:
        """The OU schedule of ``method``: ``OUSchedule(h0, rho, blocks)`` for ``"lfm"``, one block for ``"global"``."""
        if method == "global":
            return OUSchedule.global_flow()
        if method != "lfm":
            raise ValueError(f"only the flow methods 'lfm' and 'global' have a schedule, not {method!r}")
        return OUSchedule(self.h0, self.rho, self.blocks)

    def matcher(self):
        """A new torchcfm matcher of ``path`` with sigma = 0."""
        from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                        VariancePreservingConditionalFlowMatcher)

        cls = ConditionalFlowMatcher if self.path == "linear" else VariancePreservingConditionalFlowMatcher
        return cls(sigma=0.0)

    def fit_options(self) -> dict:
        """Keywords of ``FlowPolicy.fit`` and ``RegressionPolicy.fit`` (add ``seed`` and ``progress``);
        ``pool``, ``free_share`` and ``block_batch`` are flow options, which ``RegressionPolicy.fit`` accepts and ignores."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "warmup": self.warmup, "lr_decay": self.decay, "ema_decay": self.optim.ema_decay, "pool": self.pool,
                "free_share": self.free_share, "block_batch": self.block_batch}

    def replace(self, **changes) -> "PolicyRecipe":
        """A copy with ``changes`` (checked like a new recipe)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-ready values, one per field (what policy files and result files store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyRecipe":
        """Read :meth:`to_dict`'s output. A field it lacks (written by an older version) takes the
        value those versions trained with: :data:`BEFORE_FIELD` where the default changed since,
        today's default otherwise."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe fields {unknown}; this version knows {sorted(known)}")
        return cls(**{**BEFORE_FIELD, **data})

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field, with the field's default and help; a bool field's flag takes
        ``true``/``false`` and alone means ``true`` (``--shared`` = ``--shared true``)."""
        group = parser.add_argument_group("recipe", "how the policies are built and trained (PolicyRecipe)")
        for f in dataclasses.fields(cls):
            meta, flag = f.metadata, "--" + f.name.replace("_", "-")
            shown = "none" if f.default is None else f.default
            shown = str(shown).lower() if isinstance(shown, bool) else shown
            kwargs = {"choices": meta["choices"]} if meta["choices"] else {"type": meta["type"]}
            if meta["type"] is _bool:
                kwargs.update(nargs="?", const=True, metavar="{true,false}")
            group.add_argument(flag, dest=f.name, default=f.default, help=f"{meta['help']} (default: {shown})", **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PolicyRecipe":
        """The recipe of parsed arguments (from a parser that :meth:`add_arguments` filled)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

"""One velocity network for all blocks of an LFM model, told apart by a learned block embedding.

The LFM paper (section 7) suggests a single network ``v(t, x, n)`` serving every block, so that an
N-block model has the parameters of one network (a global flow's budget) instead of N networks'.
:class:`SharedVelocity` is that network: a *core* network and an ``nn.Embedding(N, k)`` whose row
for block ``n`` is appended to the core's conditioning input (after the model's own condition,
if any). With the default core, an :class:`~torchcfm_local.MLP`, that input is concatenated with
``x`` and the time features in the first layer, so block n's row acts as a learned block-specific
shift of the first layer's pre-activations, carried through every later layer. It is the simplest
choice that works with any core taking a conditioning vector: no change to the core, ``k (N +
width)`` extra parameters, and with ``k >= N`` (the default up to 16 blocks) the blocks' shifts can
be independent, as with a one-hot code.

Block n of a :class:`~torchcfm_local.LocalFlowMatching` model gets ``shared.block(n)``: a thin
:class:`SharedBlock` view called ``net(t, x)`` (``net(t, x, cond)`` in a conditional model) like
any block network, so ``encode``, ``decode``, ``sample``, ``log_prob`` and ``distill`` work
unchanged. Passing the bound method as the model's factory is the one way to share weights::

    shared = tl.SharedVelocity.mlp(2, n_blocks=9, width=384)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.025, 1.25, 9), velocity_factory=shared.block)
    lfm.fit(x, pool="ou", batches_per_block=1000)  # all blocks trained jointly

How the sharing is kept:

* parameters: every view registers the same :class:`SharedVelocity`; ``lfm.parameters()`` yields
  each tensor once (torch drops repeats) and ``lfm.to(...)`` converts each tensor once.
* ``state_dict``: torch lists a module registered under several names under each name (N keys,
  one storage). A saved model stores the shared network once, with its spec, and loading builds
  one network and its N views (:func:`saved_shared`, :func:`load_shared`).
* training: shared blocks are trained together by ``fit(pool="ou")``
  (:mod:`torchcfm_local.training.joint`). Anything that trains one block after another (the
  pushforward pool, ``train_blocks``, ``reflow``) refuses them: training block n would move the
  weights of the blocks trained before it. Every step moves all blocks at once, and the chain is
  sensitive to the noise of the last steps: train with ``lr_decay="cosine"`` (the comparison with a
  constant rate is ``benchmarks/bench_shared.py``, results in ``benchmarks/results/shared_tree*.md``).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ._checks import is_int, positive_int
from .checkpoint import CheckpointError
from .networks import MLP, NETWORKS, network_spec, width_for_parameters

__all__ = ["SharedVelocity", "SharedBlock", "shared_network", "shared_width_for_parameters",
           "default_embed_dim", "saved_shared", "shared_factory", "load_shared"]

#: The default embedding width is the number of blocks, at most this.
MAX_DEFAULT_EMBED = 16


def default_embed_dim(n_blocks: int) -> int:
    """``min(n_blocks, 16)``: one dimension per block (independent block shifts), capped so a long
    chain does not widen the first layer much."""
    return min(positive_int(n_blocks, "n_blocks"), MAX_DEFAULT_EMBED)


def _network_from_spec(spec, what: str) -> nn.Module:
    if not (isinstance(spec, dict) and spec.get("type") in NETWORKS and isinstance(spec.get("config"), dict)):
        raise ValueError(f"{what} must be an nn.Module or a spec {{'type': <a name in NETWORKS>, 'config': {{...}}}}, "
                         f"got {spec!r}")
    return NETWORKS[spec["type"]](**spec["config"])


class SharedVelocity(nn.Module):
    """One velocity network for all N blocks: ``core(t, x, [cond, embedding[n]])``.

    Args:
        core: the shared network, called ``core(t, x, c)`` with ``c`` of shape
            ``(B, cond_features + embed_dim)``: the model's conditioning input (none for an
            unconditional model) followed by the block's embedding row. Or its spec
            ``{"type", "config"}`` (how files store it). Build it with room for the embedding,
            e.g. ``MLP(dim, cond_features=embed_dim)``; :meth:`mlp` does this.
        n_blocks: N, the number of blocks (rows of the embedding).
        embed_dim: k, the width of each block's embedding.

    ``forward(t, x, block, cond=None)``: ``block`` is a block number (1-based, as everywhere in the
    package) or a ``(B,)`` integer tensor of them (one per row: several blocks in one call).
    Networks listed in :data:`~torchcfm_local.networks.NETWORKS` as cores make the shared network
    savable without code (:attr:`config`); for another core pass ``SharedVelocity(core, ...).block``
    to ``LocalFlowMatching.load``.

    Raises:
        ValueError / TypeError: a bad core, block count or embedding width.
    """

    def __init__(self, core: Union[nn.Module, dict], n_blocks: int, embed_dim: int):
        super().__init__()
        positive_int(n_blocks, "n_blocks")
        positive_int(embed_dim, "embed_dim")
        if not isinstance(core, nn.Module):
            core = _network_from_spec(core, "core")
        core_cond = getattr(core, "cond_features", None)
        if isinstance(core_cond, int) and core_cond < embed_dim:
            raise ValueError(f"the core takes {core_cond} conditioning features, fewer than embed_dim={embed_dim}; "
                             f"build it with cond_features=embed_dim (+ cond_dim + 1 for a conditional model)")
        self.core = core
        self.embedding = nn.Embedding(n_blocks, embed_dim)
        self.n_blocks, self.embed_dim = n_blocks, embed_dim
        #: width of the model's conditioning input (``cond_dim + 1``; 0: unconditional), when the core tells
        self.cond_features = core_cond - embed_dim if isinstance(core_cond, int) else None
        spec = network_spec(core)
        self.config = None if spec is None else {"core": spec, "n_blocks": n_blocks, "embed_dim": embed_dim}

    @classmethod
    def mlp(cls, dim: int, n_blocks: int, *, width: int = 256, depth: int = 3, embed_dim: Optional[int] = None,
            cond_dim: Optional[int] = None, **mlp) -> "SharedVelocity":
        """A shared :class:`~torchcfm_local.MLP` core (the default block network) for data of ``dim``
        features (``prod(shape)``); ``cond_dim``: the model's, for a conditional model; ``embed_dim``
        default :func:`default_embed_dim`; ``mlp``: further MLP arguments (``n_freq``, ``activation``)."""
        k = default_embed_dim(n_blocks) if embed_dim is None else positive_int(embed_dim, "embed_dim")
        extra = 0 if cond_dim is None else positive_int(cond_dim, "cond_dim") + 1
        return cls(MLP(dim, width=width, depth=depth, cond_features=k + extra, **mlp), n_blocks, k)

    def block(self, n: int) -> "SharedBlock":
        """Block ``n``'s view (1-based): pass this method as ``velocity_factory``."""
        return SharedBlock(self, n)

    def _embed(self, block, rows: int) -> torch.Tensor:
        if isinstance(block, torch.Tensor):
            if block.dtype.is_floating_point or block.shape != (rows,):
                raise ValueError(f"block must be a block number or a ({rows},) integer tensor of them, "
                                 f"got {block.dtype} of shape {tuple(block.shape)}")
            return self.embedding(block.to(self.embedding.weight.device) - 1)
        if not is_int(block) or not 1 <= block <= self.n_blocks:
            raise IndexError(f"block {block!r} is outside the blocks 1..{self.n_blocks} of this SharedVelocity")
        return self.embedding.weight[int(block) - 1].expand(rows, -1)

    def forward(self, t: torch.Tensor, x: torch.Tensor, block, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = x.shape[0]
        got = 0 if cond is None else cond.reshape(rows, -1).shape[1]
        if self.cond_features is not None and got != self.cond_features:
            raise ValueError(
                f"this SharedVelocity takes a conditioning input of {self.cond_features} features (a conditional "
                f"model's cond_dim + 1; 0 for an unconditional model), got {got}; build it for the model's cond_dim "
                "(SharedVelocity.mlp(..., cond_dim=...))")
        emb = self._embed(block, rows)
        c = emb if cond is None else torch.cat([cond.reshape(rows, -1).to(emb.dtype), emb], dim=1)
        return self.core(t, x, c)

    def extra_repr(self) -> str:
        return f"n_blocks={self.n_blocks}, embed_dim={self.embed_dim}"


class SharedBlock(nn.Module):
    """Block ``block``'s view of a :class:`SharedVelocity`: ``net(t, x[, cond]) = shared(t, x, block[, cond])``.

    Holds no weights of its own; every view of one shared network registers that network, so
    training a view trains the network all blocks use. ``shared`` may be the config of a
    shared network (how a distilled student of a shared block is stored), which builds a new one.
    """

    def __init__(self, shared: Union[SharedVelocity, dict], block: int):
        super().__init__()
        if isinstance(shared, dict):
            shared = SharedVelocity(**shared)
        if not isinstance(shared, SharedVelocity):
            raise TypeError(f"shared must be a SharedVelocity, got {type(shared).__name__}")
        if not is_int(block) or not 1 <= block <= shared.n_blocks:
            raise IndexError(f"block {block!r} is outside the blocks 1..{shared.n_blocks} of this SharedVelocity "
                             f"(built with n_blocks={shared.n_blocks}; the model's schedule must have as many blocks)")
        self.shared = shared
        self.block = int(block)

    @property
    def config(self) -> Optional[dict]:
        """Rebuilds this view with a shared network of its own (``None`` for a custom core)."""
        return None if self.shared.config is None else {"shared": self.shared.config, "block": self.block}

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.shared(t, x, self.block, cond)

    def extra_repr(self) -> str:
        return f"block={self.block}"


def shared_network(model_or_nets) -> Optional[SharedVelocity]:
    """The :class:`SharedVelocity` behind all blocks of a model (or a list of block networks);
    ``None`` when no block is a :class:`SharedBlock`.

    Raises:
        ValueError: only some blocks are views, the views belong to different shared networks,
            block n's network is the view of another block, or the shared network was built for
            another number of blocks.
    """
    nets: Sequence[nn.Module] = list(getattr(model_or_nets, "nets", model_or_nets))
    views = [n for n, net in enumerate(nets, 1) if isinstance(net, SharedBlock)]
    if not views:
        return None
    hint = "pass one shared network's block method as the factory (velocity_factory=shared.block)"
    if len(views) < len(nets):
        others = [n for n in range(1, len(nets) + 1) if n not in views]
        raise ValueError(f"blocks {views} are views of a SharedVelocity but blocks {others} are not; "
                         f"a model's blocks share one network or none: {hint}")
    shared = nets[0].shared
    foreign = [n for n, net in enumerate(nets, 1) if net.shared is not shared]
    if foreign:
        raise ValueError(f"blocks {foreign} are views of another SharedVelocity than block 1's; {hint}")
    misplaced = [f"block {n} is the view of block {net.block}" for n, net in enumerate(nets, 1) if net.block != n]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)}; {hint}")
    if shared.n_blocks != len(nets):
        raise ValueError(f"the SharedVelocity was built for {shared.n_blocks} blocks but the model has {len(nets)}; "
                         f"build it with n_blocks={len(nets)}")
    return shared


def shared_width_for_parameters(dim: int, n_blocks: int, target: int, *, depth: int = 3,
                                embed_dim: Optional[int] = None, cond_dim: Optional[int] = None, **mlp) -> int:
    """The width of :meth:`SharedVelocity.mlp` whose parameter count (core + embedding) is closest to
    ``target``, e.g. the total of N separate block MLPs (:func:`~torchcfm_local.networks.width_for_parameters`)."""
    return width_for_parameters(lambda width: SharedVelocity.mlp(dim, n_blocks, width=width, depth=depth,
                                                                 embed_dim=embed_dim, cond_dim=cond_dim, **mlp),
                                target)


# ---------------------------------------------------------------------- files (serialization's hooks)
def saved_shared(model) -> Optional[dict]:
    """``{"spec", "weights"}``: the shared network of ``model``'s blocks, stored once (``None`` without one)."""
    shared = shared_network(model)
    return None if shared is None else {"spec": network_spec(shared), "weights": shared.state_dict()}


def shared_factory(entry: dict, velocity_factory: Optional[Callable[[int], nn.Module]],
                   source: str) -> Callable[[int], nn.Module]:
    """The factory that rebuilds a saved model whose blocks share one network (``entry``: :func:`saved_shared`'s).

    ``velocity_factory``, when given, is used, except that a :meth:`SharedVelocity.block` method
    is replaced by the same method of a copy: loading never writes into a network in use.
    """
    if not isinstance(entry, dict):
        raise CheckpointError(f"{source}: its shared network is stored as {type(entry).__name__}, not a dict")
    if velocity_factory is not None:
        owner = getattr(velocity_factory, "__self__", None)
        if isinstance(owner, SharedVelocity) and getattr(velocity_factory, "__func__", None) is SharedVelocity.block:
            return copy.deepcopy(owner).block
        return velocity_factory
    spec = entry.get("spec")
    if spec is None:
        raise ValueError(f"{source} shares one custom network between its blocks; pass velocity_factory="
                         "SharedVelocity(core, n_blocks, embed_dim).block with the core used in training")
    try:
        net = _network_from_spec(spec, "the shared network")
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{source}: cannot rebuild its shared network from {spec!r}: {err}") from err
    if not isinstance(net, SharedVelocity):
        raise CheckpointError(f"{source}: its shared network is a {type(net).__name__}, not a SharedVelocity")
    return net.block


def load_shared(model, entry: Optional[dict], source: str) -> None:
    """Load the saved shared network ``entry`` into ``model``'s (built by :func:`shared_factory`).

    Raises:
        ValueError: the file and the model disagree on whether the blocks share one network.
        CheckpointError: the weights do not fit the network.
    """
    shared = shared_network(model)
    if entry is None:
        raise ValueError(f"{source} holds a separate network per block, but velocity_factory builds views of one "
                         "SharedVelocity; pass a factory of separate networks")
    if shared is None:
        raise ValueError(f"{source} holds one network shared by all blocks, but velocity_factory builds separate "
                         "networks; pass SharedVelocity(...).block")
    try:
        shared.load_state_dict(entry["weights"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: the shared network's weights do not fit it: {err}") from err

"""torchcfm-local: Local Flow Matching (Xu, Cheng & Xie, arXiv 2410.02548) for torchcfm.

Public API::

    import torchcfm_local as tl
    lfm = tl.LocalFlowMatching(dim=2)      # default schedule tl.OUSchedule(): 3 blocks
    report = lfm.fit(x_train, batches_per_block=1000, batch_size=256)
    x = lfm.sample(1000); z = lfm.encode(x); x2 = lfm.decode(z)
"""
__version__ = "0.1.0"

from . import datasets
from .checkpoint import CheckpointError
from .composer import LocalFlowMatching
from .distillation import DistilledSampler, DistillReport, ReflowReport, Segment, StageReport, distill, distill_plan, reflow
from .metrics import energy_distance, mode_weight_error
from .likelihood import FlowDivergence, bits_per_dim, flow_divergence, log_prob, standard_normal_log_prob
from .matchers import LocalBlockMatcher, exact_ot_pairing
from .networks import MLP
from .pool import MemmapPool, PoolDirError
from .reports import BlockReport, FitReport, IntegrationStats, LogProbTerms, PoolStats
from .schedule import OUSchedule, ou_step
from .shared import SharedVelocity
from .solvers import RK4, ODEOptions, VelocityField
from .training import BlockTrainer, FitConfig
from .training.steps import choose_sampling_steps

__all__ = [
    "datasets",
    "LocalFlowMatching",
    "BlockTrainer",
    "FitConfig",
    "OUSchedule",
    "ou_step",
    "LocalBlockMatcher",
    "exact_ot_pairing",
    "MLP",
    "SharedVelocity",
    "MemmapPool",
    "PoolDirError",
    "ODEOptions",
    "choose_sampling_steps",
    "RK4",
    "VelocityField",
    "FitReport",
    "BlockReport",
    "PoolStats",
    "IntegrationStats",
    "CheckpointError",
    "energy_distance",
    "mode_weight_error",
    "log_prob",
    "flow_divergence",
    "FlowDivergence",
    "standard_normal_log_prob",
    "bits_per_dim",
    "LogProbTerms",
    "distill",
    "distill_plan",
    "DistilledSampler",
    "DistillReport",
    "StageReport",
    "Segment",
    "reflow",
    "ReflowReport",
]

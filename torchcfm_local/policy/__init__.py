"""Action-chunk policies: conditional flow matching (global or LFM) on observation windows.

* :class:`FlowPolicy` with ``predict_action(obs_dict) -> {"action": (B, Ta, Da), ...}``;
* :class:`RegressionPolicy`, the same interface with a plain MSE regressor (a baseline);
* :mod:`.demos`: the demonstration file format and windowing;
* :mod:`.formats`: Robomimic HDF5 files and LeRobot v3 directories, read and written
  (:func:`load_any_demos` reads any of the three formats);
* :mod:`.tasks`: environments with scripted experts (``point``: a pure-numpy toy task);
* :func:`evaluate`: batched rollouts with success rate and per-chunk latency;
* :class:`PolicyRecipe` (:mod:`.recipe`): every training knob and its default, shared by
  ``lfm-policy train`` and the benchmark; :mod:`.protocol`: Diffusion Policy's evaluation protocol.
"""
from .demos import Demos, load_demos, save_demos
from .formats import load_any_demos, load_robomimic, save_robomimic
from .formats_lerobot import load_lerobot, save_lerobot
from .normalizer import Normalizer
from .policy import POLICY_MLP, FlowPolicy, RegressionPolicy, load_policy
from .recipe import PolicyRecipe
from .rollout import RolloutReport, evaluate
from .tasks import TASKS, make_env, collect_demos

__all__ = ["FlowPolicy", "RegressionPolicy", "load_policy", "POLICY_MLP", "Normalizer", "Demos", "load_demos", "save_demos",
           "load_any_demos", "load_robomimic", "save_robomimic", "load_lerobot", "save_lerobot", "evaluate",
           "RolloutReport", "TASKS", "make_env", "collect_demos", "PolicyRecipe"]

"""adam_jax: Adam and AdaMax (Kingma & Ba, 2015) as pure-functional Optax transformations."""

from adam_jax import _flax_support
from adam_jax._hyperparams import Hyperparams, hyperparams
from adam_jax.aliases import adam, adamax, adamw
from adam_jax.averaging import TemporalAveragingState, averaged_params, temporal_averaging
from adam_jax.checkpoint import (
    CheckpointMismatchError,
    checkpoint_fingerprint,
    restore_checkpoint,
    save_checkpoint,
)
from adam_jax.convert import from_optax_state
from adam_jax.flat import FlatMomentsState, flat_moments
from adam_jax.flax_nnx import load_into_nnx
from adam_jax.kahan import KahanSummationState, kahan_summation
from adam_jax.monitoring import MonitorState, StepStats, monitor, step_stats
from adam_jax.partition import (
    PartitionReport,
    partition_report,
    partition_sharding,
    partitioned,
)
from adam_jax.quantize import QuantizedMomentsState, quantized_moments
from adam_jax.schedules import inverse_sqrt_schedule
from adam_jax.sharding import state_sharding
from adam_jax.transforms import (
    BiasCorrectionState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    bias_correction,
    scale_by_adam,
    scale_by_adamax,
)


def _installed_version() -> str:
    """The version of the installed distribution (pyproject.toml is the only place it is written)."""
    from importlib import metadata

    try:
        return metadata.version("adam-jax")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

_flax_support.install()  # flax.serialization handles every adam_jax state

__all__ = [
    "BiasCorrectionState",
    "CheckpointMismatchError",
    "FlatMomentsState",
    "Hyperparams",
    "KahanSummationState",
    "MonitorState",
    "PartitionReport",
    "QuantizedMomentsState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "StepStats",
    "TemporalAveragingState",
    "adam",
    "adamax",
    "adamw",
    "averaged_params",
    "bias_correction",
    "checkpoint_fingerprint",
    "flat_moments",
    "from_optax_state",
    "hyperparams",
    "inverse_sqrt_schedule",
    "kahan_summation",
    "load_into_nnx",
    "monitor",
    "partition_report",
    "partition_sharding",
    "partitioned",
    "quantized_moments",
    "restore_checkpoint",
    "save_checkpoint",
    "scale_by_adam",
    "scale_by_adamax",
    "state_sharding",
    "step_stats",
    "temporal_averaging",
]

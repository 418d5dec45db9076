"""Run configuration: typed sections, layered building, validation and run identity.

Below runs and sweeps (``imer.experiments``), above models and data: it checks
model and loader options but knows nothing of training or run folders.
"""

from imer.config.build import (
    CONFIG_ROOT,
    apply_override,
    build_data_config,
    build_run_config,
    config_from_dict,
    read_config_file,
    resolve_config_file,
)
from imer.config.identity import config_hash, dataset_label
from imer.config.schema import RESUME_FREE, RUN_LOCAL, DataConfig, MissingConfig, RunConfig, TrainConfig
from imer.config.validation import check_select_metric, validate_run_config

__all__ = [
    "CONFIG_ROOT",
    "RESUME_FREE",
    "RUN_LOCAL",
    "DataConfig",
    "MissingConfig",
    "RunConfig",
    "TrainConfig",
    "apply_override",
    "build_data_config",
    "build_run_config",
    "check_select_metric",
    "config_from_dict",
    "config_hash",
    "dataset_label",
    "read_config_file",
    "resolve_config_file",
    "validate_run_config",
]

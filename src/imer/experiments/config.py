"""The run config's former home, kept for the ComP files that import it from here (tests/test_comp.py,
tests/test_comp_transplant.py, benchmarks/comp_side_by_side.py); the config lives in :mod:`imer.config`."""

from imer.config import RunConfig, build_run_config, read_config_file, resolve_config_file
from imer.config.build import parse_value

__all__ = ["RunConfig", "build_run_config", "parse_value", "read_config_file", "resolve_config_file"]

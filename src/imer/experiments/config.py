"""The run config's former home, kept for the callers that import it from here (tests/test_comp.py); see :mod:`imer.config`."""

from imer.config import RunConfig, build_run_config, read_config_file, resolve_config_file

__all__ = ["RunConfig", "build_run_config", "read_config_file", "resolve_config_file"]

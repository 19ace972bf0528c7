"""Run configuration: the schema (``schema.py``) and YAML + override loading (``load.py``)."""

from tunesmith.config.load import load_config, load_raw, validate_dict
from tunesmith.config.schema import RunConfig

__all__ = ["RunConfig", "load_config", "load_raw", "validate_dict"]

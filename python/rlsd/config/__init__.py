"""One dataclass tree for a run, loaded from YAML (unknown keys are errors, not silently ignored).

- :mod:`rlsd.config.schema`: the sections and their defaults
- :mod:`rlsd.config.checks`: the checks of types and values (``ConfigError`` naming each key)
- :mod:`rlsd.config.load`: from a mapping, a YAML file and ``--set`` overrides
"""

from .checks import ConfigError
from .load import apply_override, config_from_dict, config_to_dict, load_config, parse_value, read_yaml
from .schema import (AlgoConfig, Config, DataConfig, LoraConfig, ModelConfig, RolloutConfig, TeacherConfig,
                     TrainConfig, VerifierConfig)

__all__ = ["AlgoConfig", "Config", "ConfigError", "DataConfig", "LoraConfig", "ModelConfig", "RolloutConfig",
           "TeacherConfig", "TrainConfig", "VerifierConfig", "apply_override", "config_from_dict", "config_to_dict",
           "load_config", "parse_value", "read_yaml"]

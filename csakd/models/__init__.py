"""CSAKD models: presets, configuration and the MAC counter."""
from .blocks import CLRA, CLRB, clra_reference, clrb_reference
from .config import PRESETS, ModelConfig, preset_config
from .csa import CSAFusion, attention_weights, csa_reference
from .macs import count_macs
from .network import DTSNet, Student, StudentLarge, Teacher, TeacherLarge, create, from_config

__all__ = ["CLRA", "CLRB", "CSAFusion", "DTSNet", "ModelConfig", "PRESETS", "Student", "StudentLarge",
           "Teacher", "TeacherLarge", "attention_weights", "clra_reference", "clrb_reference", "count_macs", "create",
           "csa_reference", "from_config", "preset_config"]

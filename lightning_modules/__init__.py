"""LightningModules, one per task; plain networks live in ``lightning_modules.networks``."""

from lightning_modules.classifier import ImageClassifier
from lightning_modules.shadows import ShadowEnsemble

__all__ = ["ImageClassifier", "ShadowEnsemble"]

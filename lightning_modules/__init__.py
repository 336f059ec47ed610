"""LightningModules, one per task; plain networks live in ``lightning_modules.networks``."""

from lightning_modules.classifier import ImageClassifier

__all__ = ["ImageClassifier"]

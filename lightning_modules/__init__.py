"""LightningModules, one per task; plain networks live in ``lightning_modules.networks``."""

from lightning_modules.captioner import Captioner
from lightning_modules.classifier import ImageClassifier
from lightning_modules.cvae import FeatureCVAE
from lightning_modules.diffusion import TextToImageDiffusion
from lightning_modules.features import FeatureExtractor
from lightning_modules.inversion import GradientInversion
from lightning_modules.probe import LinearProbe
from lightning_modules.semsim import SemSimNet
from lightning_modules.shadows import ShadowEnsemble
from lightning_modules.spinml_generation import SegmentGeneration as SegmentGeneration

__all__ = [
    "Captioner",
    "FeatureCVAE",
    "FeatureExtractor",
    "GradientInversion",
    "ImageClassifier",
    "LinearProbe",
    "SemSimNet",
    "ShadowEnsemble",
    "TextToImageDiffusion",
]

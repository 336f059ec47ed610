"""Callbacks: run-folder bookkeeping, prediction writers, reports."""

from callbacks.captions import CaptionWriter
from callbacks.features import FeatureWriter
from callbacks.predictions import PredictionWriter
from callbacks.reports import TestReport
from callbacks.run_dir import RunDirectory
from callbacks.shadow_logits import ShadowLogitsWriter
from callbacks.synthetic_images import SyntheticImageWriter

__all__ = [
    "CaptionWriter",
    "FeatureWriter",
    "PredictionWriter",
    "RunDirectory",
    "ShadowLogitsWriter",
    "SyntheticImageWriter",
    "TestReport",
]

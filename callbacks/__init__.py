"""Callbacks: run-folder bookkeeping, prediction writers, reports."""

from callbacks.captions import CaptionWriter
from callbacks.diffusion import AdapterExport, SampleGrid
from callbacks.features import FeatureWriter
from callbacks.gradient_defence import GradientDefence as GradientDefence
from callbacks.inversion_writer import InversionWriter
from callbacks.predictions import PredictionWriter
from callbacks.reports import TestReport
from callbacks.run_dir import RunDirectory
from callbacks.shadow_logits import ShadowLogitsWriter
from callbacks.spinml_writer import SegmentLevelWriter as SegmentLevelWriter
from callbacks.synthetic_images import SyntheticImageWriter

__all__ = [
    "AdapterExport",
    "CaptionWriter",
    "FeatureWriter",
    "InversionWriter",
    "PredictionWriter",
    "RunDirectory",
    "SampleGrid",
    "ShadowLogitsWriter",
    "SyntheticImageWriter",
    "TestReport",
]

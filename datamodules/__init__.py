"""LightningDataModules, one per kind of data."""

from datamodules.captioned_images import CaptionedImageDataModule
from datamodules.features import FeatureDataModule
from datamodules.human_annotations import HumanAnnotationDataModule
from datamodules.images import ImageFolderDataModule
from datamodules.inversion_targets import InversionTargetDataModule
from datamodules.membership import MembershipDataModule
from datamodules.prompts import PromptDataModule
from datamodules.spinml import SpinMLDataModule as SpinMLDataModule
from datamodules.spinml_requests import SegmentRequestDataModule as SegmentRequestDataModule
from datamodules.synthetic_pool import SyntheticPoolDataModule

__all__ = [
    "CaptionedImageDataModule",
    "FeatureDataModule",
    "HumanAnnotationDataModule",
    "ImageFolderDataModule",
    "InversionTargetDataModule",
    "MembershipDataModule",
    "PromptDataModule",
    "SyntheticPoolDataModule",
]

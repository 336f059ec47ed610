"""LightningDataModules, one per kind of data."""

from datamodules.features import FeatureDataModule
from datamodules.images import ImageFolderDataModule
from datamodules.membership import MembershipDataModule

__all__ = ["FeatureDataModule", "ImageFolderDataModule", "MembershipDataModule"]

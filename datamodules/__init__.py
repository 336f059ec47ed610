"""LightningDataModules, one per kind of data."""

from datamodules.images import ImageFolderDataModule
from datamodules.membership import MembershipDataModule

__all__ = ["ImageFolderDataModule", "MembershipDataModule"]

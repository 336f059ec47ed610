"""LightningDataModules, one per kind of data."""

from datamodules.images import ImageFolderDataModule

__all__ = ["ImageFolderDataModule"]

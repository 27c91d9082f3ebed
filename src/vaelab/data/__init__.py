"""LightningDataModules, one per dataset family; all share `ImageDataModule`'s batch path."""

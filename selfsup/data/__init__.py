"""Data modules: one LightningDataModule per source, yielding dict batches with named fields."""

"""One thin LightningModule per stage: preference (1), rewards (2), alignment (3)."""

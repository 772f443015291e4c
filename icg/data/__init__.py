"""Records, the on-disk dataset format, converters, the synthetic platform and the one DataModule."""

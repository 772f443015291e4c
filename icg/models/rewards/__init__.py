"""Differentiable rewards: images in [0, 1] plus a RewardContext -> one score per image."""

"""Stock diffusers components, the conditioning contract, and the sampling loop with its gradient window."""

"""Evaluation of ICG's covers on the paper's axes: quality, fidelity, personalization, downstream recommendation."""

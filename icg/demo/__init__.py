"""``make demo``: the whole ICG pipeline on the embedded default, the synthetic platform, with tiny models.

install (Makefile) -> synthetic platform -> the demo's stand-ins (a base model for SD 1.5, an MLLM for Qwen2-VL) ->
stage 1 (click model) -> stage 2 (reward bundle) -> stage 3 (ICG, and its ablations: without user refinement, without
meta tokens, through the trained stand-in MLLM) -> export and covers for chosen pairs -> evaluation -> a blind pairwise
study answered by simulated raters (user appeal) -> report + gallery + the demo's claims. Every training step is the
``icg fit`` command a user would type; the configs are ``lightning_configs/demo/*.yaml`` and everything is written
under ``runs/demo/``.

- ``paths.py``: where the demo reads and writes.
- ``steps.py``: the step runner (independent ``icg`` commands side by side, each in a one-thread subprocess).
- ``pipeline.py``: the steps themselves, in order.
- ``claims.py``: what every seed must show (guarded claims) and what it aims at (targets).
- ``seeds.py``: the whole pipeline once per seed and the per-seed table with mean and worst case.
- ``__main__.py``: ``python -m icg.demo [--seed N | --seeds 0 1 2] [--check]``.
"""

"""``icg explore``: an interactive viewer over a trained export (ICG, Bian et al., EMNLP 2025).

Pick or type a user, pick an item of a dataset (or bring a title and an image) and see the title-only, ICG without
user and ICG covers side by side, drawn with the same seed and settings, with the reward scores and, on the
synthetic platform, the user's true click probability. ``explorer`` draws and caches (no web code), ``scoring``
scores, ``catalogue`` and ``uploads`` hold what can be picked, ``loading`` builds the explorer from an export, ``app``
is the FastAPI app; the command is ``icg.commands.explore``.
"""

"""``icg serve``: which cover to show a user for an item, answered from a pool of covers made offline (docs/serving.md).

``pool`` reads a pool folder into dictionaries (no web code); ``app`` is the FastAPI app over it (the study's Host
guard, served on loopback by ``icg.study.server``).
"""

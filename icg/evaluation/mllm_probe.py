"""Does the MLLM read the item? A linear probe of the meta-token features (ICG step 1; Bian et al., EMNLP 2025).

ICG's item features are the MLLM's last hidden states at the meta-token positions (``MetaTokenPrompter``). They are
only as good as what the frozen MLLM reads from the title and the reference image. On the synthetic platform every
item's object colour and shape are known (its hidden truth), so a multinomial logistic regression fitted on the
features of some items and scored on held-out items measures it: chance is 1/8 for colour, 1/6 for shape.

Each prompter is probed twice: reading the title and the cover (``title_image``, as ICG reads items), and the cover
with an empty title (``image_only``), which shows whether the vision path reads anything. The meta tokens are the
prompter's own seeded initialisation, frozen, so two MLLMs compared under the same ``seed`` read through the same
meta tokens (up to the scale of each MLLM's token embeddings).

    python -m icg.evaluation.mllm_probe --data runs/demo/data --mllm_path runs/demo/mllm
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from icg.data.datamodule import ICGDataModule
from icg.data.synthetic import read_truth
from icg.models.meta_prompt import MetaTokenPrompter, seeded_meta_tokens
from icg.models.standin_mllm import held_out_items

log = logging.getLogger(__name__)
ATTRIBUTES = ("colour", "shape")
INPUTS = ("title_image", "image_only")


def meta_features(
    prompter: MetaTokenPrompter, titles: Sequence[str], images: Tensor, batch_size: int = 32
) -> np.ndarray:
    """The prompter's features averaged over the meta positions: one D-vector per item (no gradient).

    Args:
        prompter: the MLLM with its meta tokens.
        titles: one title per item (``""`` for the cover alone).
        images: items x 3 x H x W covers in [0, 1].
        batch_size: items per MLLM forward.
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(titles), batch_size):
            feats = prompter(list(titles[start : start + batch_size]), images[start : start + batch_size])
            out.append(feats.mean(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def linear_probe(features: np.ndarray, labels: Sequence[str], test: Sequence[bool], seed: int = 0) -> float:
    """Held-out accuracy of a standardized multinomial logistic regression fitted on the other rows.

    Args:
        features: rows x D.
        labels: one class name per row.
        test: True for the rows scored (never fitted on).
        seed: the regression's random state.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels, test = np.asarray(labels), np.asarray(test, dtype=bool)
    if test.all() or not test.any():
        raise ValueError("the probe needs rows to fit on and rows to score: test is all True or all False")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    probe.fit(features[~test], labels[~test])
    return float((probe.predict(features[test]) == labels[test]).mean())


def seed_meta_tokens(prompter: MetaTokenPrompter, seed: int) -> None:
    """Redraw the meta tokens as the prompter does (normal, at its token embeddings' scale) from ``seed`` alone.

    Loading an MLLM may draw from the global generator, so the prompter's own draw depends on the model loaded;
    this one does not (same seed and width: the same tokens up to scale).
    """
    scale = float(prompter._core().get_input_embeddings().weight.float().std())
    with torch.no_grad():
        prompter.meta_tokens.copy_(seeded_meta_tokens(*prompter.meta_tokens.shape, seed, scale))


def probe_prompter(
    prompter: MetaTokenPrompter,
    titles: Sequence[str],
    images: Tensor,
    labels: dict[str, Sequence[str]],
    test: Sequence[bool],
) -> dict[str, float]:
    """Held-out probe accuracy per input (``title_image``, ``image_only``) and attribute: ``{"image_only/shape": ..}``.

    Args:
        prompter: the MLLM with its meta tokens, frozen here (evaluation mode, no gradient).
        titles: one title per item.
        images: items x 3 x H x W covers in [0, 1].
        labels: attribute name -> one class per item.
        test: True for the held-out items.
    """
    prompter.eval()
    result = {}
    for name, prompt_titles in (("title_image", list(titles)), ("image_only", [""] * len(titles))):
        features = meta_features(prompter, prompt_titles, images)
        for attribute, values in labels.items():
            result[f"{name}/{attribute}"] = linear_probe(features, values, test)
    return result


def platform_items(root: str | Path, image_size: int = 32) -> tuple[list[str], list[str], Tensor, dict[str, list[str]]]:
    """A synthetic platform's items: ids, titles, covers (items x 3 x S x S in [0, 1]) and ``ATTRIBUTES`` labels."""
    dm = ICGDataModule(str(root), image_size=image_size, batch_size=64)
    dm.setup("fit")
    ids, titles, images = [], [], []
    for batch in dm.dataloader("train", "items", fields=("item_id", "title", "image"), batch_size=64):
        ids += list(batch["item_id"])
        titles += list(batch["title"])
        images.append(batch["image"])
    truth = {row["item_id"]: row for row in read_truth(root)["items"]}
    labels = {a: [truth[i][a] for i in ids] for a in ATTRIBUTES}
    return ids, titles, torch.cat(images), labels


def probe_platform(
    root: str | Path,
    mllm_paths: dict[str, str | None],
    holdout_fraction: float = 0.25,
    num_meta_tokens: int = 8,
    image_size: int = 56,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Probe accuracies of several MLLMs on one platform's held-out items (those ``held_out_items`` picks).

    Args:
        root: the synthetic platform (``icg data synth``'s folder, with ``truth/``).
        mllm_paths: a name -> the MLLM's local folder, or None for the random tiny Qwen2-VL (``tiny_config: {}``).
        holdout_fraction: the share of items scored; the stand-in MLLM's ``holdout_fraction`` (it never trained on
            them).
        num_meta_tokens: the prompter's N.
        image_size: the prompter's ``image_size``.
        seed: seeds the meta tokens' initialisation (the same for every MLLM).
    """
    ids, titles, images, labels = platform_items(root)
    test = held_out_items(ids, holdout_fraction)
    results = {}
    for name, path in mllm_paths.items():
        kwargs = {"mllm_path": path} if path is not None else {"tiny_config": {}}
        prompter = MetaTokenPrompter(**kwargs, num_meta_tokens=num_meta_tokens, image_size=image_size, config_key=name)
        seed_meta_tokens(prompter, seed)
        results[name] = probe_prompter(prompter, titles, images, labels, test)
        log.info("%s: %s", name, results[name])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the synthetic platform's folder (with truth/)")
    parser.add_argument("--mllm_path", required=True, help="the trained stand-in MLLM's folder")
    parser.add_argument("--holdout_fraction", type=float, default=0.25, help="= the stand-in's holdout_fraction")
    parser.add_argument("--seed", type=int, default=0, help="seeds the meta tokens' initialisation")
    args = parser.parse_args(argv)
    results = probe_platform(
        args.data, {"random": None, "trained": args.mllm_path}, args.holdout_fraction, seed=args.seed
    )
    sys.stdout.write(json.dumps(results, indent=2) + "\n")  # cli-output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

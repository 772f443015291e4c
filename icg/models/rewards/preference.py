"""The personalized reward of ICG (Bian et al., EMNLP 2025): the stage-1 click model, conditioned on the user.

Stage 3 aligns the adapter with a weighted sum of rewards, one of which is personalized: the click logit that the
stage-1 preference model (``icg.models.preference.PreferenceModel``) gives a (user, cover) pair. The logit is a
differentiable function of the cover pixels (the model's image encoder is torch ops end to end), so it can be
back-propagated into the generator like any other reward.

``PreferenceReward`` is built in two ways:

* from a stage-1 checkpoint (``preference_ckpt``, the stage-2 config): the frozen model and its user vocabulary are
  read through ``PreferenceModel.from_checkpoint``;
* from its own spec inside a reward-bundle checkpoint (``model_spec`` + ``user_ids``, no ``preference_ckpt``): the
  model is rebuilt with fresh weights and the bundle's state dict then loads the stage-1 weights it saved. So stage 3
  and evaluation never need the original stage-1 file.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from icg.ckpt import CheckpointError, instantiate
from icg.errors import ConfigError
from icg.models.image_ops import check_images
from icg.models.preference import PreferenceModel
from icg.models.rewards.base import Reward, RewardContext

logger = logging.getLogger(__name__)


class PreferenceReward(Reward):
    """Click logit of the stage-1 model for ``(context.user_idx, image)``; range: any real (logit of P(click)).

    ``context.user_idx`` indexes ``user_ids`` (the stage-1 dataset's sorted user ids, which are the DataModule's
    ``user_ids`` when stages 1-3 read the same dataset); ``-1`` or an index outside the vocabulary scores with the
    model's cold-start fallback user. When the stage-1 model uses titles (``title_type="hashed"``) the context must
    carry them; the click-history term of ``history_type="mean"`` models is left out (stage 3 has no history).

    Args:
        preference_ckpt: a stage-1 checkpoint (``icg fit`` of ``PreferenceStage``); loads model, weights and users.
            Usually left unset here and given once as the stage's ``model.init_args.preference_ckpt``, which
            ``RewardStage`` loads into every ``PreferenceReward`` without one.
        model_spec: instead of ``preference_ckpt``: the ``{"class_path", "init_args"}`` spec of the model (its
            weights come from the enclosing bundle's state dict). Written by this class; not meant for hand configs.
        user_ids: with ``model_spec``: the model's user vocabulary.
        name: the reward's name in the bundle and in metric keys.
    """

    def __init__(
        self,
        preference_ckpt: str | None = None,
        model_spec: dict[str, Any] | None = None,
        user_ids: list[str] | None = None,
        name: str = "preference",
    ) -> None:
        super().__init__()
        self.name = name
        self.model: nn.Module | None = None
        self.user_ids: list[str] = []
        if preference_ckpt is not None and model_spec is not None:
            raise ConfigError(f"PreferenceReward '{name}': give preference_ckpt or model_spec, not both")
        if preference_ckpt is not None:
            self.load_preference_checkpoint(preference_ckpt)
        elif model_spec is not None:
            if user_ids is None:
                raise ConfigError(f"PreferenceReward '{name}': model_spec given without user_ids")
            try:
                # icg.ckpt.instantiate builds nested specs first, so a rebuilt bundle hands over the module itself
                model = model_spec if isinstance(model_spec, nn.Module) else instantiate(model_spec)
            except CheckpointError as err:
                raise CheckpointError(
                    f"PreferenceReward '{name}': cannot rebuild the model from model_spec: {err}"
                ) from err
            self._set_model(model, user_ids)
        # neither: deferred until RewardStage(preference_ckpt=...) loads the stage-1 checkpoint
        self.freeze()

    def load_preference_checkpoint(self, path: str, config_key: str = "preference_ckpt") -> None:
        """Load the frozen stage-1 model and its user vocabulary from a stage-1 checkpoint.

        Args:
            path: a checkpoint written by ``PreferenceStage``.
            config_key: the config key that named ``path``, quoted in every error.
        """
        model, user_ids = PreferenceModel.from_checkpoint(path, config_key=config_key)
        logger.info("preference reward '%s': stage-1 model from %s (%d users)", self.name, path, len(user_ids))
        self._set_model(model, user_ids)
        self.freeze()

    def _set_model(self, model: nn.Module, user_ids: list[str]) -> None:
        if not isinstance(getattr(model, "spec", None), dict):
            raise CheckpointError(f"PreferenceReward '{self.name}': the preference model has no spec to rebuild it")
        self.model = model
        self.user_ids = list(user_ids)

    @property
    def loaded(self) -> bool:
        """Whether a stage-1 model is in place (a reward configured without ``preference_ckpt`` waits for one)."""
        return self.model is not None

    @property
    def spec(self) -> dict[str, Any]:
        """Rebuilds this reward without the stage-1 file: the model's spec and users; weights come from the bundle."""
        if self.model is None:
            raise CheckpointError(
                f"PreferenceReward '{self.name}' has no stage-1 model yet: set preference_ckpt "
                "(model.init_args.preference_ckpt of the rewards stage)"
            )
        init_args = {"preference_ckpt": None, "model_spec": self.model.spec, "user_ids": self.user_ids}
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": init_args | {"name": self.name},
        }

    @property
    def num_users(self) -> int:
        """Size of the user vocabulary that ``context.user_idx`` indexes."""
        return len(self.user_ids)

    def forward(self, images: Tensor, context: RewardContext) -> Tensor:
        """Click logits B of covers B x 3 x H x W in [0, 1] for the users ``context.user_idx`` (B long)."""
        where = f"{type(self).__name__} '{self.name}'"
        check_images(images, where)
        if self.model is None:
            raise RuntimeError(f"{where}: no stage-1 model loaded; set preference_ckpt")
        if context is None or context.user_idx is None:
            raise ValueError(f"{where}: needs RewardContext.user_idx (one user index per image), got None")
        user_idx = context.user_idx
        if user_idx.shape != (images.shape[0],):
            raise ValueError(f"{where}: user_idx has shape {tuple(user_idx.shape)}, expected ({images.shape[0]},)")
        titles = None
        if getattr(self.model, "title_encoder", None) is not None:
            if context.titles is None:
                raise ValueError(f"{where}: the stage-1 model uses titles (title_type='hashed'); pass titles")
            titles = list(context.titles)
        return self.model(images, user_idx.to(images.device).long(), titles=titles)

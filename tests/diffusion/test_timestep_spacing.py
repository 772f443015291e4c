"""``diffusion.timestep_spacing``: few-step chains start at the last timestep, the choice travels with the adapter
(checkpoint, export, generation, the evaluation's title-only baseline), and a bad value is one line naming the key."""

from __future__ import annotations

import json

import pytest
import torch

from icg.diffusion.source import DiffusionSource
from icg.errors import ConfigError
from icg.evaluation.methods import TitleOnlyMethod
from icg.generation import CoverGenerator, UserTable
from icg.generation.export import CONFIG
from tests.helpers.generation import tiny_generator

TINY = {"cross_attention_dim": 32, "sample_size": 16}


def four_steps(components) -> list[int]:
    components.scheduler.set_timesteps(4)
    return components.scheduler.timesteps.tolist()


def test_trailing_spacing_starts_a_few_step_chain_at_the_last_timestep():
    assert four_steps(DiffusionSource(tiny=TINY).load()) == [751, 501, 251, 1]  # SD 1.5's leading spacing
    assert four_steps(DiffusionSource(tiny=TINY, timestep_spacing="trailing").load()) == [999, 749, 499, 249]


def test_the_spacing_travels_with_the_export(tmp_path):
    torch.manual_seed(0)
    users = UserTable(["u0", "u1"], torch.randn(3, 8))
    folder = tiny_generator(users, timestep_spacing="trailing").save_pretrained(tmp_path / "export")
    assert json.loads((folder / CONFIG).read_text())["diffusion"]["timestep_spacing"] == "trailing"
    loaded = CoverGenerator.from_pretrained(folder)
    assert four_steps(loaded.diffusion) == [999, 749, 499, 249]
    leading = CoverGenerator.from_pretrained(tiny_generator(users).save_pretrained(tmp_path / "leading"))
    assert four_steps(leading.diffusion) == [751, 501, 251, 1]


def test_the_title_only_baseline_takes_icgs_spacing_and_leaves_the_folder_alone(tiny_base_model):
    before = (tiny_base_model / "scheduler" / "scheduler_config.json").read_bytes()
    trailing = TitleOnlyMethod.from_folder(tiny_base_model, timestep_spacing="trailing")
    assert four_steps(trailing.components) == [999, 749, 499, 249]
    assert four_steps(TitleOnlyMethod.from_folder(tiny_base_model).components) == [751, 501, 251, 1]
    assert (tiny_base_model / "scheduler" / "scheduler_config.json").read_bytes() == before


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (DiffusionSource(tiny=TINY, timestep_spacing="backwards"),
         "model.init_args.diffusion.timestep_spacing='backwards': expected one of leading, trailing, linspace"),
        (DiffusionSource(variant="flux", timestep_spacing="trailing"),
         "model.init_args.diffusion.timestep_spacing='trailing': FlowMatchEulerDiscreteScheduler has no timestep "
         "spacing; leave it null"),
    ],
)  # fmt: skip
def test_a_bad_spacing_is_one_line_naming_the_key(source, message):
    with pytest.raises(ConfigError) as err:
        source.load()
    assert str(err.value) == message

"""docs/layers.svg shows the layers the import contract in pyproject.toml enforces, in the same order."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with the standard library")

ROOT = Path(__file__).resolve().parents[1]


def test_the_layer_picture_matches_the_import_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    contract = [name.strip("()") for name in layers]
    picture = re.findall(r'font-weight="bold">(icg\.[\w.]+)</text>', (ROOT / "docs" / "layers.svg").read_text())
    assert picture == contract

"""The repository's paths and the exact console-script path, run in-process."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "lightning_configs" / "tiny"


def run_cli(*words: str) -> None:
    """Run the exact console-script path in-process (``icg.cli.main``)."""
    from icg.cli import main

    assert main([str(w) for w in words]) == 0


def only_ckpt(folder: Path) -> Path:
    """The one checkpoint a run wrote under ``folder`` (fails if there are none or several)."""
    found = sorted(folder.rglob("*.ckpt"))
    assert len(found) == 1, f"expected one checkpoint under {folder}, found {found}"
    return found[0]

"""The evaluation gallery opens in headless Chromium and every image in it loads (marker ``browser``).

Both a gallery written from a hand-made report and the one a real ``icg evaluate`` run writes on the tiny chained
checkpoints (``tests/conftest.py``'s ``tiny_evaluation``).
"""

import json
import re
import shutil
import subprocess

import pytest

from tests.helpers.evaluation import fake_report

pytestmark = pytest.mark.browser

# Marks each image after the page's load event (which waits for every image): loaded = decoded with a real size.
PROBE = """<script>
window.addEventListener('load', () => {
  for (const img of document.images) {
    img.setAttribute('data-loaded', img.complete && img.naturalWidth > 0 ? 'yes' : 'no');
  }
  document.body.setAttribute('data-probe', 'done');
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is not installed: `make test-browser` installs it (apt-get install -y chromium)")


def load_states(page, tmp_path) -> list[tuple[str, str]]:
    """(src, 'yes' | 'no') for every <img> of ``page`` (an HTML file), as Chromium rendered it."""
    probe = page.with_name("probe_" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'data-probe="done"' in result.stdout, result.stdout[-2000:]
    return re.findall(r'<img src="([^"]+)"[^>]*data-loaded="(yes|no)"', result.stdout)


def test_every_gallery_image_loads_in_chromium(tmp_path):
    from icg.evaluation.report import write_report

    report, grid = fake_report(tmp_path)
    write_report(report, tmp_path / "run", grid=grid, tensorboard=False)
    states = load_states(tmp_path / "run" / "gallery.html", tmp_path)
    assert len(states) == 3 + 2 * 3 * 2  # a reference per item + users x items x methods
    assert all(state == "yes" for _, state in states), [src for src, state in states if state != "yes"]


def test_every_image_of_a_real_evaluation_gallery_loads(tiny_evaluation, tmp_path):
    out, _ = tiny_evaluation
    report = json.loads((out / "report.json").read_text())
    users, items = report["sample"]["grid"]
    states = load_states(out / "gallery.html", tmp_path)
    written = {f"gallery/{p.name}" for p in (out / "gallery").glob("*.png")}
    assert {src for src, _ in states} == written  # the page shows every picture the run wrote
    assert len(written) >= users * items * len(report["methods"]) + items  # every method per cell + the references
    assert all(state == "yes" for _, state in states), [src for src, state in states if state != "yes"]


def test_the_probe_detects_a_missing_image(tmp_path):
    from icg.evaluation.report import write_report

    report, grid = fake_report(tmp_path)
    write_report(report, tmp_path / "run", grid=grid, tensorboard=False)
    (tmp_path / "run" / "gallery" / "u0_i0_icg.png").unlink()
    states = dict(load_states(tmp_path / "run" / "gallery.html", tmp_path))
    assert states["gallery/u0_i0_icg.png"] == "no"
    assert sum(state == "yes" for state in states.values()) == len(states) - 1

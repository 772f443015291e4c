"""``icg explore`` (issue 16 part 3): three covers that differ only in conditioning, scores, the app, bad input."""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import struct
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from icg.cli import main
from icg.data.oracle import Oracle
from icg.evaluation.methods import AlignmentMethod, TitleOnlyMethod
from icg.explore.app import create_app
from icg.explore.explorer import ExploreInputError, Settings
from icg.explore.loading import load_explorer
from icg.explore.uploads import MAX_UPLOAD_PIXELS, UPLOAD_PREFIX, Uploads
from icg.generation.generator import reference_batch, to_pil
from icg.models.rewards.bundle import load_reward_bundle
from icg.study.server import running
from tests.helpers.cli import run_cli


@pytest.fixture(scope="module")
def explored(tiny_export_on_base, tiny_platform, tiny_stage2_ckpt):
    """(CoverExplorer, ExploreCatalogue) over the tiny export with its base model, dataset and reward bundle."""
    return load_explorer(tiny_export_on_base, tiny_platform, tiny_stage2_ckpt)


def settings(explorer, **changes) -> Settings:
    values = {**explorer.defaults.query(), **{k: str(v) for k, v in changes.items()}}
    return Settings.parse(values, explorer.defaults)


def pixels(png: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def test_three_covers_differ_only_in_conditioning(explored):
    explorer, catalogue = explored
    gen = explorer.generator
    assert explorer.methods == ("title_only", "icg_no_user", "icg") and explorer.base is gen.diffusion  # shared UNet
    a, b = gen.users.user_ids[:2]
    item = catalogue.item(catalogue.default_item)
    same_noise = settings(explorer, noise="item")
    first, second = explorer.covers(a, item, same_noise), explorer.covers(b, item, same_noise)
    assert len(set(first.png.values())) == 3  # three different covers
    # the same noise for both users: only ICG changes with the user, the two baselines do not
    assert first.png["title_only"] == second.png["title_only"] and first.png["icg_no_user"] == second.png["icg_no_user"]
    assert first.png["icg"] != second.png["icg"]
    # per (user, item) noise: the ICG cover is exactly CoverGenerator's cover of that pair
    pair = explorer.covers(a, item, settings(explorer, noise="pair", seed=5))
    expected = gen([a], [item.title], [item.image], item_ids=[item.key], seed=5).images[0]
    assert pair.png["icg"] == io.BytesIO(_png(expected)).getvalue()
    assert pair.known_user and pair.seed == gen.seeds([a], [item.key], 5)[0]
    assert explorer.covers(a, item, settings(explorer, noise="pair", seed=5)) is pair  # cached, not drawn again


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_covers_are_the_evaluation_methods_covers(explored):
    """Title only and ICG without user are the evaluation's baselines, ICG is CoverGenerator's cover, at any setting."""
    explorer, catalogue = explored
    gen = explorer.generator
    user = gen.users.user_ids[2]
    item = catalogue.item(catalogue.default_item)
    batch = {"user_id": [user], "item_id": [item.key], "title": [item.title],
             "image": reference_batch([item.image], gen.image_size)}  # fmt: skip
    guided = explorer.covers(user, item, settings(explorer, guidance_scale=2.5, strength=0.5, num_steps=8, seed=3))
    title_only = TitleOnlyMethod(explorer.base, explorer.title_encoder, num_steps=8, image_size=gen.image_size,
                                 guidance_scale=2.5, strength=0.5, seed=3)(batch)  # fmt: skip
    assert guided.png["title_only"] == _png(to_pil(title_only)[0])
    icg = gen([user], [item.title], [item.image], item_ids=[item.key], seed=3, num_steps=8, guidance_scale=2.5,
              strength=0.5).images[0]  # fmt: skip
    assert guided.png["icg"] == _png(icg)
    plain = explorer.covers(user, item, explorer.defaults)  # AlignmentMethod samples with the export's settings
    assert plain.png["icg_no_user"] == _png(to_pil(AlignmentMethod(gen, user="fallback")(batch))[0])
    assert plain.png["icg"] == _png(to_pil(AlignmentMethod(gen, user="own")(batch))[0])
    assert guided.png["icg"] != plain.png["icg"]


def test_user_guidance_moves_only_the_icg_cover_the_slider_shows_it(explored):
    explorer, catalogue = explored
    gen = explorer.generator
    user, item = gen.users.user_ids[4], catalogue.item(catalogue.default_item)
    plain = explorer.covers(user, item, settings(explorer, seed=2))
    guided = explorer.covers(user, item, settings(explorer, seed=2, user_guidance=3))
    assert guided.png["title_only"] == plain.png["title_only"] and guided.png["icg_no_user"] == plain.png["icg_no_user"]
    assert guided.png["icg"] != plain.png["icg"]
    expected = gen([user], [item.title], [item.image], item_ids=[item.key], seed=2, user_guidance=3.0).images[0]
    assert guided.png["icg"] == _png(expected)  # the explorer's ICG is CoverGenerator's at that scale
    cold = explorer.covers(user, item, settings(explorer, seed=2, user_guidance=0))  # the cold-start user's cover
    assert (pixels(cold.png["icg"]) - pixels(cold.png["icg_no_user"])).abs().max() <= 1.5 / 255
    for bad, message in (("-1", "user_guidance=-1: expected 0 to 10"), ("11", "user_guidance=11"),
                         ("x", "user_guidance='x': expected a number")):  # fmt: skip
        with pytest.raises(ExploreInputError, match=re.escape(message)):
            settings(explorer, user_guidance=bad)
    with running(create_app(explorer, catalogue)) as url:
        page = get(f"{url}/?user={user}&item={item.key}&user_guidance=2.5")[1].decode()
        assert re.search(r'<input type="range" name="user_guidance" id="user_guidance" min="0" max="8(\.0)?" '
                         r'step="0.1" value="2.5">', page)  # fmt: skip
        assert '<output id="user_guidance-value">2.5</output>' in page and "user_guidance=2.5" in page
        status, body, _ = get(f"{url}/cover/icg.png?user={user}&item={item.key}&user_guidance=-1")
        assert status == 400 and json.loads(body)["detail"].startswith("user_guidance=-1: expected 0 to 10")


def test_unknown_users_get_the_fallback(explored):
    explorer, catalogue = explored
    item = catalogue.item(catalogue.default_item)
    covers = explorer.covers("someone-new", item, explorer.defaults)
    assert not covers.known_user and covers.png["icg"] == covers.png["icg_no_user"]


def test_scores_are_the_rewards_and_the_true_click_probability(explored, tiny_platform, tiny_stage2_ckpt):
    explorer, catalogue = explored
    user = explorer.generator.users.user_ids[3]
    item = catalogue.item(catalogue.default_item)
    covers = explorer.covers(user, item, explorer.defaults)
    rows = {row.name: row for row in covers.scores}
    bundle = load_reward_bundle(tiny_stage2_ckpt)
    assert list(rows) == [f"reward/{n}" for n in bundle.names] + ["reward/total", "true_click_prob"]
    assert all(set(row.values) == {"reference", *explorer.methods} for row in rows.values())
    oracle = Oracle.from_dataset(tiny_platform)
    for method in explorer.methods:  # the oracle's P(click) of the PNG served, up to 8-bit rounding
        truth = oracle(pixels(covers.png[method])[None], oracle.user_index([user]))
        assert rows["true_click_prob"].values[method] == pytest.approx(float(truth), abs=2e-3)
    stranger = {r.name: r for r in explorer.covers("someone-new", item, explorer.defaults).scores}
    assert "not a user of the platform" in stranger["true_click_prob"].note
    preference = next(n for n in bundle.names if getattr(bundle.rewards[n], "user_ids", None))
    assert "not among its users" in stranger[f"reward/{preference}"].note
    assert stranger[f"reward/{preference}"].values["reference"] != rows[f"reward/{preference}"].values["reference"]


def test_settings_are_checked():
    defaults = Settings(1.0, 1.0, 0, 10)
    assert Settings.parse({"strength": "0.5", "noise": "item"}, defaults) == Settings(1.0, 0.5, 0, 10, "item")
    for values, message in (
        ({"strength": "0"}, "strength=0: expected 0 < strength <= 1"),
        ({"strength": "1.5"}, "strength=1.5"),
        ({"strength": "abc"}, "strength='abc': expected a number"),
        ({"guidance_scale": "0.5"}, "guidance_scale=0.5: expected 1 to 30"),
        ({"num_steps": "2.5"}, "num_steps='2.5': expected an integer"),
        ({"num_steps": "4", "strength": "0.2"}, "runs no denoising step"),
        ({"seed": "-1"}, "seed=-1"),
        ({"noise": "user"}, "noise='user': expected one of pair, item"),
    ):
        with pytest.raises(ExploreInputError, match=re.escape(message)):
            Settings.parse(values, defaults)


def test_uploads_are_checked_and_kept_small():
    uploads = Uploads(image_size=32)
    big = Image.new("RGB", (300, 200), (200, 30, 30))
    item = uploads.add("  A red   poster ", _png(big), "poster.png")
    assert item.key.startswith(UPLOAD_PREFIX) and item.title == "A red poster" and item.image.size == (32, 32)
    assert uploads.get(item.key) is item
    with pytest.raises(ExploreInputError, match=r"notes\.txt: not an image PIL can read .*upload a PNG, JPEG"):
        uploads.add("A title", b"just some text", "notes.txt")
    with pytest.raises(ExploreInputError, match="needs a title"):
        uploads.add("   ", _png(big), "poster.png")
    with pytest.raises(ExploreInputError, match="empty file"):
        uploads.add("A title", b"", "poster.png")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (its pixels are missing: only the header should be read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_uploads_of_too_many_pixels_are_refused_before_decoding():
    uploads = Uploads(image_size=32)
    assert MAX_UPLOAD_PIXELS == 4096 * 4096 < Image.MAX_IMAGE_PIXELS  # below PIL's own bomb limit
    with pytest.raises(ExploreInputError, match=r"^big\.png: 9400 x 9400 pixels; upload an image of at most 16,777"):
        uploads.add("A title", png_claiming(9400, 9400), "big.png")
    real = _png(Image.new("L", (5000, 5000), 90))  # one colour: a small file that decodes to 25 MB
    assert len(real) < 100_000
    with pytest.raises(ExploreInputError, match="5000 x 5000 pixels"):
        uploads.add("A title", real, "real.png")
    assert uploads.add("A title", _png(Image.new("RGB", (4096, 16), 9)), "wide.png").image.size == (32, 32)


def test_the_guard_refuses_other_hosts_and_cross_site_uploads():
    """Without a model: the guard answers before any route (a stub catalogue serves ``/api/users``)."""
    catalogue = SimpleNamespace(search_users=lambda q="", limit=None: ["u0001"])
    with running(create_app(SimpleNamespace(), catalogue, allowed_hosts=["lab.example"])) as url:
        port = url.rsplit(":", 1)[1]
        for host in ("attacker.example", f"attacker.example:{port}", f"10.0.0.1:{port}"):
            status, body, _ = get_with(f"{url}/api/users", {"Host": host})
            assert status == 400 and b"u0001" not in body and b"--allowed_hosts" in body, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "lab.example"):
            assert get_with(f"{url}/api/users", {"Host": host})[:2] == (200, b'["u0001"]'), host
        image = _png(Image.new("RGB", (8, 8)))
        for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/"}, {"Origin": "null"}):
            status, _, body = post_upload(f"{url}/upload", {"title": "T"}, "p.png", image, headers)
            assert status == 403 and "is not this server" in body, headers


def get(url: str) -> tuple[int, bytes, str]:
    return get_with(url, {})


def get_with(url: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def post_upload(
    url: str, fields: dict[str, str], filename: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """A multipart form post (what the page's upload form sends); (status, final URL, body)."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Disposition: form-data; "
    parts = [f'{head}name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'{head}name="image"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    kind = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    request = urllib.request.Request(url, body, {**kind, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.url, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, url, err.read().decode()


def test_the_app_serves_the_page_covers_and_scores(explored, tiny_platform):
    explorer, catalogue = explored
    user, item = explorer.generator.users.user_ids[1], catalogue.default_item
    with running(create_app(explorer, catalogue)) as url:
        status, page, _ = get(f"{url}/?user={user}&item={item}")
        page = page.decode()
        assert status == 200 and "Title only" in page and "ICG without user" in page and 'id="fallback"' not in page
        clicks = catalogue.recent_clicks(user, item)
        assert 'id="taste"' in page and page.count('alt="clicked cover"') == len(clicks) > 0
        query = urllib.parse.urlencode({"user": user, "item": item, **explorer.defaults.query()})
        covers = {m: get(f"{url}/cover/{m}.png?{query}") for m in explorer.methods}
        assert all(s == 200 and kind == "image/png" for s, _, kind in covers.values())
        assert len({body for _, body, _ in covers.values()}) == 3
        status, body, _ = get(f"{url}/api/covers?{query}")
        answer = json.loads(body)
        assert status == 200 and answer["known_user"] and answer["columns"] == ["reference", *explorer.methods]
        assert [s["name"] for s in answer["scores"]][-1] == "true_click_prob"
        assert get(f"{url}/reference.png?item={item}")[0] == 200
        assert get(f"{url}/click/0.png?user={user}&item={item}")[0] == 200
        assert json.loads(get(f"{url}/api/users?q={user}")[1]) == [user]
        # an unknown user: the page says so
        assert 'id="fallback"' in get(f"{url}/?user=someone-new&item={item}")[1].decode()
        # bad settings or items: one line, status 400, no traceback
        status, body, _ = get(f"{url}/cover/icg.png?user={user}&item={item}&strength=2")
        assert status == 400 and "strength=2: expected 0 < strength <= 1" in json.loads(body)["detail"]
        status, body, _ = get(f"{url}/?user={user}&item=nope")
        assert status == 400 and "item &#39;nope&#39; is not in" in body.decode() and "Traceback" not in body.decode()
        assert get(f"{url}/cover/other.png?{query}")[0] == 404
        # an upload: back to the page with the new item's covers; a file that is not an image: one line
        image = (tiny_platform / "images").iterdir().__next__().read_bytes()
        page_origin = {"Origin": url, "Referer": f"{url}/?user={user}"}  # as the browser sends the page's form
        fields = {"title": "A new red poster", "user": user}
        status, final, body = post_upload(f"{url}/upload", fields, "p.png", image, page_origin)
        assert status == 200 and "item=upload%3A" in final and "A new red poster" in body
        key = urllib.parse.parse_qs(urllib.parse.urlparse(final).query)["item"][0]
        assert get(f"{url}/cover/icg.png?user={user}&item={urllib.parse.quote(key)}")[0] == 200
        status, _, body = post_upload(f"{url}/upload", {"title": "Notes", "user": user}, "notes.txt", b"hello")
        assert status == 400 and "notes.txt: not an image PIL can read" in body
        status, _, body = post_upload(f"{url}/upload", {"title": "Huge"}, "huge.png", png_claiming(9400, 9400))
        assert status == 400 and "huge.png: 9400 x 9400 pixels; upload an image of at most" in body


def test_an_export_without_a_base_model_folder_has_no_title_only(tiny_stage3_ckpt, tiny_platform, tmp_path):
    run_cli("export", "--stage3_ckpt", tiny_stage3_ckpt, "--out", tmp_path / "export")
    explorer, catalogue = load_explorer(tmp_path / "export", tiny_platform)
    assert explorer.methods == ("icg_no_user", "icg") and "tiny one built from config" in explorer.unavailable
    covers = explorer.covers(explorer.generator.users.user_ids[0], catalogue.item(catalogue.default_item),
                             explorer.defaults)  # fmt: skip
    assert set(covers.png) == {"icg_no_user", "icg"} and {r.name for r in covers.scores} == {"true_click_prob"}
    with running(create_app(explorer, catalogue)) as url:
        page = get(f"{url}/")[1].decode()
        assert "tiny one built from config" in page
        status, body, _ = get(f"{url}/cover/title_only.png?item={catalogue.default_item}")
        assert status == 404 and "no Title only covers" in json.loads(body)["detail"]


def one_line_error(capsys, words, pattern):
    """``icg explore`` fails with exit status 2 and one line on stderr matching ``pattern``."""
    assert main([str(w) for w in words]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert err.startswith("icg explore: ")


def test_bad_input_is_one_line(tiny_export_on_base, tiny_stage1_ckpt, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export_on_base, broken)
    (broken / "negative.safetensors").unlink()
    one_line_error(capsys, ["explore", "--export", broken, "--port", 0], "lacks negative.safetensors")
    one_line_error(capsys, ["explore", "--export", tmp_path / "nothing", "--port", 0], "nothing")
    one_line_error(capsys, ["explore", "--export", tiny_export_on_base, "--port", 0, "--rewards_ckpt",
                            tiny_stage1_ckpt], r"--rewards_ckpt: .*'preference' stage")  # fmt: skip
    one_line_error(capsys, ["explore", "--export", tiny_export_on_base, "--port", 0, "--data_root", tmp_path],
                   "items")  # fmt: skip
    one_line_error(capsys, ["explore", "--export", tiny_export_on_base, "--port", 0, "--device", "gpu:x"],
                   "--device 'gpu:x': not a device")  # fmt: skip
    if not torch.cuda.is_available():
        one_line_error(capsys, ["explore", "--export", tiny_export_on_base, "--port", 0, "--device", "cuda"],
                       "--device cuda: no CUDA device on this machine")  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        one_line_error(capsys, ["explore", "--export", tiny_export_on_base, "--port", port],
                       f"port {port} on 127.0.0.1 is in use.*--port {port + 1}")  # fmt: skip

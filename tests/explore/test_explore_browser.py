"""The cover explorer driven in Debian's headless Chromium through selenium + chromedriver (marker ``browser``).

On a tiny export with its base model folder: the page shows the title-only, ICG-without-user and ICG covers of the
chosen user (all three images decode, and are three different files) with their score table; choosing the same
noise for every user and then another user through the controls changes the ICG cover and only it; an unknown user
is announced and drawn with the fallback; an uploaded title and image gets its three covers, a file that is not an
image one line. ``ICG_EXPLORE_SCREENSHOT=path.png`` keeps a screenshot of the page for a person to look at.
"""

from __future__ import annotations

import os
import urllib.request

import pytest

from tests.helpers.browser import chrome

pytestmark = pytest.mark.browser

METHODS = ("title_only", "icg_no_user", "icg")


def drawn(browser) -> dict[str, bytes]:
    """Wait for the page's covers and score table; the bytes of each cover as served (method -> PNG)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "scores").get_attribute("data-state") != "pending")
    assert browser.find_element(By.ID, "scores").get_attribute("data-state") == "ready"
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return Array.from(document.images).every(i => i.complete)")
    )
    loaded = browser.execute_script("return Array.from(document.images).every(i => i.naturalWidth > 0)")
    assert loaded, "an image did not decode"
    covers = {}
    for method in METHODS:
        source = browser.find_element(By.ID, f"cover-{method}").get_attribute("src")
        with urllib.request.urlopen(source, timeout=60) as response:
            covers[method] = response.read()
    return covers


def submit_and_wait(browser, action) -> None:
    """Run ``action`` (which submits a form) and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "main")
    action()
    WebDriverWait(browser, 60).until(staleness_of(page))


def type_user(browser, user_id: str) -> None:
    """Type over the user box and press Enter (selenium's ``clear()`` would fire a change, i.e. a redraw, first)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.find_element(By.ID, "user").send_keys(Keys.CONTROL, "a", Keys.NULL, user_id, Keys.ENTER)


def test_the_explorer_shows_three_covers_for_a_chosen_user(tiny_export_on_base, tiny_platform, tiny_stage2_ckpt,
                                                           tmp_path):  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from icg.explore.app import create_app
    from icg.explore.loading import load_explorer
    from icg.study.server import running

    explorer, catalogue = load_explorer(tiny_export_on_base, tiny_platform, tiny_stage2_ckpt)
    first_user, other_user = explorer.generator.users.user_ids[:2]
    with running(create_app(explorer, catalogue)) as url:
        browser = chrome(tmp_path / "profile")
        try:
            browser.get(url + "/")
            covers = drawn(browser)
            assert browser.find_element(By.ID, "user-id").text == first_user
            assert len(set(covers.values())) == 3  # three different covers
            assert browser.find_element(By.ID, "title").text == catalogue.item(catalogue.default_item).title
            assert browser.find_elements(By.CSS_SELECTOR, "#clicks img")  # the user's recent clicks
            rows = browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
            names = [row.get_attribute("data-name") for row in rows]
            assert names[-2:] == ["reward/total", "true_click_prob"] and len(names) >= 4
            assert all(len(row.find_elements(By.TAG_NAME, "td")) == 1 + 1 + 3 for row in rows)  # label, ref, 3 covers

            # the same noise for every user, then another user: only the ICG cover changes
            submit_and_wait(browser, lambda: Select(browser.find_element(By.ID, "noise")).select_by_value("item"))
            before = drawn(browser)
            submit_and_wait(browser, lambda: type_user(browser, other_user))
            after = drawn(browser)
            assert browser.find_element(By.ID, "user-id").text == other_user
            assert after["icg"] != before["icg"]
            assert after["title_only"] == before["title_only"] and after["icg_no_user"] == before["icg_no_user"]
            assert not browser.find_elements(By.ID, "fallback")
            if os.environ.get("ICG_EXPLORE_SCREENSHOT"):
                browser.save_screenshot(os.environ["ICG_EXPLORE_SCREENSHOT"])

            # the guidance slider, from the keyboard: to its maximum, and the covers follow
            slider = browser.find_element(By.ID, "guidance_scale")
            submit_and_wait(browser, lambda: slider.send_keys(Keys.END))
            guided = drawn(browser)
            assert "guidance_scale=15" in browser.current_url
            assert guided["icg"] != after["icg"] and len(set(guided.values())) == 3

            # a user the export does not know: said on the page, and ICG is the cover without user
            submit_and_wait(browser, lambda: type_user(browser, "someone-new"))
            unknown = drawn(browser)
            assert "not in this export" in browser.find_element(By.ID, "fallback").text
            assert unknown["icg"] == unknown["icg_no_user"]

            # an item brought by the user: a title and an image file
            picture = sorted((tiny_platform / "images").iterdir())[-1]
            browser.find_element(By.ID, "upload-title").send_keys("A brand new poster")
            browser.find_element(By.ID, "upload-image").send_keys(str(picture))
            submit_and_wait(browser, lambda: browser.find_element(By.ID, "upload-button").click())
            uploaded = drawn(browser)
            assert browser.find_element(By.ID, "title").text == "A brand new poster"
            assert len(set(uploaded.values())) == 2  # unknown user still: ICG = ICG without user

            # a file that is not an image: one line on the page
            notes = tmp_path / "notes.txt"
            notes.write_text("not a picture")
            browser.find_element(By.ID, "upload-title").send_keys("Notes")
            browser.find_element(By.ID, "upload-image").send_keys(str(notes))
            submit_and_wait(browser, lambda: browser.find_element(By.ID, "upload-button").click())
            error = WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "error")).text
            assert error.startswith("notes.txt: not an image PIL can read") and "\n" not in error
        finally:
            browser.quit()

"""The study app driven in Debian's headless Chromium through selenium + chromedriver (marker ``browser``).

A rater starts, answers 5 screens by clicking, the database holds exactly those 5 answers, and a reload (and a new
browser session with the same rater id) resumes at screen 6 with a screen not seen before.
``ICG_STUDY_SCREENSHOT=path.png`` keeps a screenshot of a rating screen for a person to look at.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.helpers.browser import chrome
from tests.helpers.study import recoloured_run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def study_run(tiny_platform, tmp_path_factory) -> Path:
    return recoloured_run(tiny_platform, tmp_path_factory.mktemp("study") / "run", users=4, items_per_user=2)


def answers(db: Path) -> list[tuple[str, int, str, str, str]]:
    with sqlite3.connect(db) as connection:
        query = "SELECT rater, comparison_id, choice, left_method, right_method FROM answers ORDER BY id"
        return connection.execute(query).fetchall()


def shown(browser) -> tuple[int, int]:
    """(comparison id on screen, answered count shown in the header), once the rating page is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # a click that submits may return before the next page is in (seen on a loaded machine): wait for it
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.NAME, "comparison_id"))
    comparison = int(browser.find_element(By.NAME, "comparison_id").get_attribute("value"))
    answered = int(browser.find_element(By.ID, "progress").get_attribute("data-answered"))
    return comparison, answered


def test_a_rater_answers_five_screens_and_a_reload_resumes(study_run, tiny_platform, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    from icg.study.app import create_app
    from icg.study.screens import load_study
    from icg.study.server import running

    db = tmp_path / "study.db"
    study = load_study(study_run, tiny_platform, db, seed=0, pairs_per_rater=None)
    with running(create_app(study)) as url:
        browser = chrome(tmp_path / "profile")
        try:
            browser.get(url + "/")
            browser.find_element(By.ID, "rater").send_keys("dana")
            browser.find_element(By.ID, "begin").click()
            seen = []
            # four clicks, then the keyboard shortcut (right arrow) for the fifth
            for k, button in enumerate(("choose-left", "choose-right", "choose-none", "choose-left", Keys.ARROW_RIGHT)):
                comparison, answered = shown(browser)
                assert answered == k and comparison not in seen
                images = browser.find_elements(By.CSS_SELECTOR, "img")
                loaded = browser.execute_script(
                    "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
                )
                assert len(images) >= 3 and loaded  # reference + two covers (+ the user's clicks) all decode
                if k == 1 and os.environ.get("ICG_STUDY_SCREENSHOT"):
                    browser.save_screenshot(os.environ["ICG_STUDY_SCREENSHOT"])
                seen.append(comparison)
                form = browser.find_element(By.ID, "answer")
                if button.startswith("choose-"):
                    browser.find_element(By.ID, button).click()
                else:
                    browser.find_element(By.TAG_NAME, "body").send_keys(button)
                WebDriverWait(browser, 30).until(staleness_of(form))  # the next page has replaced this one
            stored = answers(db)
            assert [(r, c) for r, c, *_ in stored] == [("dana", c) for c in seen]
            assert [choice for _, _, choice, *_ in stored] == ["left", "right", "none", "left", "right"]
            recorded = [(left, right) for *_, left, right in stored]
            assert recorded == [study.design.sides("dana", c) for c in seen]  # the arrangement shown is recorded
            browser.refresh()
            comparison, answered = shown(browser)
            assert answered == 5 and comparison not in seen
            assert browser.find_element(By.ID, "progress").text == f"5 of {study.screens} done"
        finally:
            browser.quit()
        # a new browser (no cookie) with the same rater id resumes too
        browser = chrome(tmp_path / "profile2")
        try:
            browser.get(url + "/?rater=dana")
            comparison, answered = shown(browser)
            assert answered == 5 and comparison not in seen
        finally:
            browser.quit()
    assert len(answers(db)) == 5  # reloading and reopening wrote nothing

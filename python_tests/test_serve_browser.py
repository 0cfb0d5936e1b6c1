"""The search page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium) against a real ``python -m jwae_ext.serve`` process over a real index: what
the page shows is what the API answers, thumbnails load, clicks and uploads search, refusals are
shown, and the browser's console stays free of errors."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from serve_testdata import serving

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs headless Chromium: apt-get install chromium chromium-driver (.ci/run does)",
)
# As root, in a sandbox with no network: no Chromium sandbox, no GPU, no calls home.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,2000",
]  # fmt: skip
K = 8
WAIT_S = 60


@pytest.fixture(scope="module")
def server(collection):
    with serving(str(collection.index)) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The page, freshly loaded, its footer filled in, k set to ``K``, the console emptied."""
    browser.get(server.url)
    wait(browser, lambda d: "images indexed" in d.find_element(By.ID, "footer").text)
    k_box = browser.find_element(By.ID, "k")
    k_box.clear()
    k_box.send_keys(str(K))
    browser.get_log("browser")  # empties it
    return browser


def wait(driver, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout).until(condition)


def shown(driver) -> list[dict]:
    """The result tiles: id, score and whether the thumbnail has loaded (naturalWidth > 0)."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#results li button')].map(b => {
             const img = b.querySelector('img');
             return {id: Number(b.dataset.id), score: Number(b.dataset.score),
                     loaded: Boolean(img && img.complete && img.naturalWidth > 0)};
           });"""
    )


def wait_for_results(driver, ids: list[int]) -> list[dict]:
    """Wait until the page shows exactly ``ids``, every thumbnail loaded; the tiles."""
    tiles = wait(
        driver,
        lambda d: (t := shown(d)) and [x["id"] for x in t] == ids and all(x["loaded"] for x in t)
        and t,
    )  # fmt: skip
    scores = [t["score"] for t in tiles]
    assert scores == sorted(scores, reverse=True)
    return tiles


def console_errors(driver, refused: tuple[int, ...] = ()) -> list[dict]:
    """The console's errors since the last call, except the network's report of a request the
    server refused with a status in ``refused`` (expected when testing refusals)."""
    return [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and not any(f"responded with a status of {s} " in e["message"] for s in refused)
    ]


def test_a_typed_query_shows_the_apis_results_in_score_order(page, server, collection):
    query = "a red zzzqx circle in the top left"
    status, answer = server.post_json("/api/search", {"text": query, "k": K})
    assert status == 200 and len(answer["results"]) == K
    box = page.find_element(By.ID, "query")
    box.send_keys(query, Keys.ENTER)  # the keyboard alone
    tiles = wait_for_results(page, [r["id"] for r in answer["results"]])
    assert len(tiles) == K
    assert "zzzqx" in page.find_element(By.ID, "unknown-words").text
    assert "q=a+red+zzzqx+circle" in page.current_url  # the address names the query
    info = server.get_json("/api/info")
    footer = page.find_element(By.ID, "footer").text
    assert f"{info['images']} images indexed" in footer and info["variant"] in footer
    assert console_errors(page) == []


def test_a_query_in_the_address_is_searched_on_load(browser, server):
    _, answer = server.post_json("/api/search", {"text": "a green star", "k": 12})
    browser.get(server.url + "?q=a+green+star")  # k: the page's default, 12
    wait_for_results(browser, [r["id"] for r in answer["results"]])
    assert browser.find_element(By.ID, "query").get_attribute("value") == "a green star"
    assert console_errors(browser) == []


def test_clicking_a_result_shows_its_neighbours(page, server):
    page.find_element(By.ID, "query").send_keys("a big blue square", Keys.ENTER)
    _, answer = server.post_json("/api/search", {"text": "a big blue square", "k": K})
    wait_for_results(page, [r["id"] for r in answer["results"]])
    chosen = answer["results"][3]["id"]
    page.find_element(By.CSS_SELECTOR, f'#results button[data-id="{chosen}"]').click()
    _, like = server.post_json("/api/search", {"id": chosen, "k": K})
    wait_for_results(page, [r["id"] for r in like["results"]])
    # and by keyboard: Enter on a focused result
    second = like["results"][1]["id"]
    page.find_element(By.CSS_SELECTOR, f'#results button[data-id="{second}"]').send_keys(Keys.ENTER)
    _, like = server.post_json("/api/search", {"id": second, "k": K})
    wait_for_results(page, [r["id"] for r in like["results"]])
    assert console_errors(page) == []


def test_an_uploaded_image_shows_the_apis_results(page, server, collection):
    path = sorted(collection.photos.glob("img*.jpg"))[2]
    status, answer = server.upload(path.read_bytes(), path.name, k=K)
    assert status == 200
    page.find_element(By.ID, "upload").send_keys(str(path))
    wait_for_results(page, [r["id"] for r in answer["results"]])
    assert console_errors(page) == []


def test_a_dropped_image_shows_the_apis_results(page, server):
    thumbnail = "/api/thumbnail/5"
    _, expected = server.upload(server.request("GET", thumbnail)[2], "dropped.jpg", k=K)
    # A drop as the browser makes it: a DataTransfer holding the file (the thumbnail's bytes).
    page.execute_script(
        """const [url, name] = arguments;
           fetch(url).then(r => r.blob()).then(blob => {
             const data = new DataTransfer();
             data.items.add(new File([blob], name, {type: 'image/jpeg'}));
             const zone = document.getElementById('drop-zone');
             zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
           });""",
        thumbnail,
        "dropped.jpg",
    )
    wait_for_results(page, [r["id"] for r in expected["results"]])
    assert console_errors(page) == []


def test_a_refused_upload_shows_the_servers_message(page, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("these are words, not pixels")
    page.find_element(By.ID, "upload").send_keys(str(fake))
    message = page.find_element(By.ID, "message")
    wait(page, lambda d: "not an image" in message.text)
    assert "refused" in message.text and "error" in message.get_attribute("class")
    assert shown(page) == []
    assert console_errors(page, refused=(400,)) == []


def test_a_query_of_unknown_words_says_so(page):
    page.find_element(By.ID, "query").send_keys("qqqz xxxw", Keys.ENTER)
    message = page.find_element(By.ID, "message")
    wait(page, lambda d: "qqqz xxxw" in message.text)
    assert "refused" in message.text
    assert console_errors(page, refused=(400,)) == []

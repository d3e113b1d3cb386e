"""The admin in a real browser: Playwright drives Debian's chromium (never a downloaded browser)
against a live test server with the demo data, logs in as the demo operator, and checks the
revenue dashboard's figures and a vehicle page against the demo data.

No chromium is a failure, not a skip: `make test` installs it (scripts/services.sh).
"""

from __future__ import annotations

import os

import pytest
from django.core.management import call_command

from billing.services.demo_data import DEMO_ADMIN
from vehicles.models import Vehicle

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ANNA_VIN = "YV4H60DL4S1012345"


@pytest.fixture
def browser_page():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"chromium not found at {CHROMIUM}: install it (apt-get install chromium; `make test` does "
            "it as root) or set CHROMIUM_PATH. The browser test is not skipped.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def demo_site(live_server):
    call_command("seed_demo", verbosity=0)
    vehicle_id = str(Vehicle.objects.get(vin=ANNA_VIN).pk)
    # Playwright's sync API runs an event loop in this thread: no ORM calls after this point.
    return live_server.url, vehicle_id


def test_operator_reads_the_dashboard_and_a_vehicle_page(demo_site, browser_page):
    base, vehicle_id = demo_site
    page = browser_page
    username, password = DEMO_ADMIN
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")

    # The index links to the dashboard.
    page.click("text=Revenue dashboard")
    page.wait_for_url("**/admin/revenue/")
    # Demo MRR: EUR 49.00 + 9.99 + 11.99 + 4.99 + 149.00 / 12 = 88.39; JPY 4,400 + 1,200.
    assert page.inner_text('[data-mrr="EUR"]') == "EUR 88.39"
    assert page.inner_text('[data-mrr="JPY"]') == "JPY 5,600"
    assert page.inner_text("#active-total") == "7"
    assert page.inner_text("#trial-conversion") == "100.0 %"
    assert page.locator("svg.report-chart").count() >= 5
    attach = page.locator('[data-attach="EX90 Twin Motor Performance|adas_lane_change"] td').all_inner_texts()
    assert attach == ["EX90 Twin Motor Performance", "adas_lane_change", "1", "1", "100.0 %"]
    assert page.locator("[data-attach]").count() == 13
    with page.expect_download() as download:
        page.click("#revenue-csv")
    assert download.value.suggested_filename.startswith("revenue-")

    # A vehicle page: who owns it and what it may use now, with why.
    page.goto(f"{base}/admin/vehicles/vehicle/{vehicle_id}/change/")
    body = page.inner_text("#content")
    assert ANNA_VIN in page.inner_text("h2, #content h2, .readonly, #content") and "Anna Schmidt" in body
    for feature in ("adas_auto_park", "adas_highway_assist", "adas_lane_change", "heated_seats"):
        assert feature in body
    # The page never loads anything from outside the test server.
    loaded = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert [url for url in loaded if not url.startswith(base)] == []

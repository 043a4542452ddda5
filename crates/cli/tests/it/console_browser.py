"""The fleet console in a real browser (Debian's headless Chromium, driven by selenium).

Called by crates/cli/tests/it/console.rs with:
  LINK      the one-time console link (iotpki admin console-link)
  BASE      https://127.0.0.1:PORT
  TOTAL     the number of devices the overview must show
  DEVICE    a device serial to revoke from its page
  CERT      the serial of its current certificate
  SHOTS     a directory for one screenshot per main page

Exits non-zero (an assertion's message on stderr) when the console does not behave.
"""

import os
import sys

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

LINK, BASE, TOTAL, DEVICE, CERT, SHOTS = (
    os.environ[k] for k in ("LINK", "BASE", "TOTAL", "DEVICE", "CERT", "SHOTS")
)

opts = webdriver.ChromeOptions()
opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for a in (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # The test authority's root is not in the browser's store; the page is still a
    # secure context (https), so Secure cookies behave as in production.
    "--ignore-certificate-errors",
    "--window-size=1280,1600",
    # No network but the server under test.
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
):
    opts.add_argument(a)
service = webdriver.ChromeService(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
d = webdriver.Chrome(options=opts, service=service)
d.set_page_load_timeout(60)


def shot(name):
    d.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def h1():
    return d.find_element(By.TAG_NAME, "h1").text


def click_and_load(element):
    """Click what submits a form or follows a link, and wait for the next page.

    The old page is marked by a variable on its window; a new page has a new window
    object without it. Not selenium's staleness_of: asked while Chromium swaps the
    documents, it can get "Node with given id does not belong to the document", an
    error it does not take for staleness (a CI run failed on it). Errors during the
    swap are waited through; only the new page, loaded, ends the wait.
    """
    d.execute_script("window.__iotpkiOldPage = true")
    element.click()
    WebDriverWait(d, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda drv: drv.execute_script(
            "return window.__iotpkiOldPage === undefined && document.readyState === 'complete'"
        ),
        "no new page loaded within 60 s of the click",
    )


try:
    # Not signed in: the sign-in page, no fleet data.
    d.get(BASE + "/console/")
    assert h1() == "Sign in", h1()
    assert "console-link" in d.page_source

    # The link asks for a confirmation, then opens a session.
    d.get(LINK)
    assert h1() == "Sign in", h1()
    click_and_load(d.find_element(By.ID, "sign-in"))
    assert h1() == "Fleet overview", (h1(), d.page_source[:2000])
    total = d.find_element(By.CSS_SELECTOR, "#state-total .n").text
    assert total == TOTAL, f"overview shows {total} devices, expected {TOTAL}"
    assert d.find_element(By.ID, "expiry").tag_name == "svg"
    cookies = {c["name"]: c for c in d.get_cookies()}
    c = cookies["__Host-iotpki-console"]
    assert c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict", c
    shot("overview")

    for path, title, name in (
        ("/console/batches", "Batches", "batches"),
        ("/console/stations", "Stations", "stations"),
        ("/console/revocations", "Revocations", "revocations"),
        ("/console/audit", "Audit log", "audit"),
        ("/console/tokens", "Enrollment tokens", "tokens"),
    ):
        d.get(BASE + path)
        assert h1() == title, (path, h1())
        shot(name)

    # The audit page filters, and the chain verifies.
    d.get(BASE + "/console/audit?action=console.")
    actions = [td.text for td in d.find_elements(By.CSS_SELECTOR, "#audit tbody tr td:nth-child(4)")]
    assert "console.login" in actions and "console.link" in actions, actions
    assert all(a.startswith("console.") for a in actions), actions
    d.get(BASE + "/console/audit/verify")
    assert "holds" in d.find_element(By.ID, "chain").text

    # Search a device, then revoke its certificate from its page.
    d.get(BASE + "/console/devices")
    d.find_element(By.ID, "serial").send_keys(DEVICE)
    click_and_load(d.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert d.find_element(By.ID, "device").text == DEVICE
    shot("device")
    form = d.find_element(By.CSS_SELECTOR, f"button[data-revoke='{CERT}']").find_element(By.XPATH, "./..")
    Select(form.find_element(By.NAME, "reason")).select_by_value("keyCompromise")
    form.find_element(By.NAME, "confirm").click()
    click_and_load(form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    notice = d.find_element(By.CSS_SELECTOR, ".notice").text
    assert notice.startswith("Revoked") and CERT in notice and "keyCompromise" in notice, notice
    d.get(BASE + "/console/devices/" + DEVICE)
    status = d.find_element(By.CSS_SELECTOR, f".cert-status[data-serial='{CERT}']").text
    assert status.startswith("revoked"), status
    shot("device-revoked")

    # Sign out: the session is gone.
    click_and_load(d.find_element(By.CSS_SELECTOR, ".who button"))
    d.get(BASE + "/console/")
    assert h1() == "Sign in", h1()
finally:
    d.quit()
print("console browser test passed")

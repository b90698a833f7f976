"""The status page in a real browser: Debian's headless Chromium, driven by chromedriver
(Selenium), logs in to a running appliance (lab 163 config) at https://mail.163.com:<port>/,
checks what the browser kept of the session cookie, holds a queued message with the page's
own button, and takes a screenshot that stays under the test run's folder.

Chromium trusts only our certificate's key (--ignore-certificate-errors-spki-list) and
resolves only mail.163.com (to 127.0.1.1); every other name fails to resolve and its
background services are off, so it talks to nothing but the appliance."""

from __future__ import annotations

import base64
import hashlib
import shutil
import struct
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.conftest import Appliance, make_lab, running
from tests.integration.test_web_admin import ADMIN, PASSWORD, send_to_unreachable

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver (make test installs them)",
)


@pytest.fixture(scope="module")
def browser_lab(tmp_path_factory) -> Iterator[Appliance]:
    a = make_lab(tmp_path_factory.mktemp("browser"))["163"]
    with running({"163": a}):
        yield a


def spki_hash(a: Appliance) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the appliance's certificate."""
    cert = x509.load_pem_x509_certificate((a.state / "tls" / "mail.163.com.crt").read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def chromium(browser_lab, tmp_path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2200",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--ignore-certificate-errors-spki-list={spki_hash(browser_lab)}",
        f"--host-resolver-rules=MAP mail.163.com {browser_lab.ip}, MAP * ~NOTFOUND",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
        "--disable-domain-reliability", "--disable-client-side-phishing-detection",
        "--metrics-recording-only", "--disable-features=OptimizationHints,MediaRouter",
    ):  # fmt: skip
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_status_page_in_chromium(browser_lab, chromium, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    a, driver = browser_lab, chromium
    queue_id = send_to_unreachable(a)
    base = f"https://mail.163.com:{a.ports[8443]}"
    driver.get(base + "/")
    wait = WebDriverWait(driver, 20)
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert driver.current_url == base + "/login"
    driver.find_element(By.ID, "user").send_keys(ADMIN)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "services")))
    assert driver.current_url == base + "/"
    assert driver.title == "mail.163.com status"

    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies["__Host-mailappliance"]
    assert session["httpOnly"] is True and session["secure"] is True
    assert session["sameSite"] == "Strict" and session["path"] == "/"
    assert "__Host-mailappliance-login" not in cookies
    assert driver.execute_script("return document.cookie") == ""  # no script can read it

    # the style sheet applied (CSP allows 'self'), the plots drawn
    h1 = driver.find_element(By.TAG_NAME, "h1")
    assert h1.value_of_css_property("font-size") != "32px"  # 1.4em of 16px, not the default
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg polyline")) == 14
    attention = driver.find_elements(By.CSS_SELECTOR, ".attention")
    assert not attention or "not running" not in attention[0].text

    row = driver.find_element(By.XPATH, f"//tr[td/code[text()='{queue_id}']]")
    row.find_element(By.CSS_SELECTOR, "button[value=hold]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.message")))
    assert (
        f"hold {queue_id}: 1 message(s)" in driver.find_element(By.CSS_SELECTOR, "p.message").text
    )
    assert (
        "1 held"
        in driver.find_element(By.ID, "queue").find_element(By.XPATH, "following-sibling::p").text
    )

    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "status-page.png"
    driver.save_screenshot(str(shot))
    width, height = png_size(shot.read_bytes())
    assert width >= 1000 and height >= 1000 and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")

    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "__Host-mailappliance" not in {c["name"] for c in driver.get_cookies()}

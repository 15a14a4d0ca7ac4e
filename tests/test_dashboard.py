"""The dashboard: token required on every route; a real headless chromium shows the cluster's node
and task counts, and they change while a job runs; timeline() writes a Chrome trace."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_every_route_needs_the_token_and_timeline_writes_a_trace(cluster, tmp_path):
    ctx_url = cluster.api.dashboard_url(cluster._runtime.peek_client().transport.address)
    assert ctx_url.startswith("http://127.0.0.1:") and "?token=" in ctx_url
    base, token = ctx_url.split("/?token=")
    for path in ("/", "/api/state", "/api/events", "/api/timeline", "/static/dashboard.js", "/nope"):
        assert _get(base + path)[0] == 403, path
        assert _get(f"{base}{path}?token=wrong{token}")[0] == 403, path
    status, body = _get(f"{base}/?token={token}")
    assert status == 200 and b"starburst" in body
    assert b"http://" not in body and b"https://" not in body  # nothing from the internet

    @cluster.remote
    def tick(i):
        return i

    assert cluster.get([tick.remote(i) for i in range(5)]) == list(range(5))
    state = json.loads(_get(f"{base}/api/state?token={token}")[1])
    assert [f for f in state["functions"] if f["name"].endswith("tick")][0]["done"] == 5
    assert len(state["nodes"]) == 1

    path = tmp_path / "trace.json"
    assert cluster.timeline(str(path)) is None
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X" and e["name"].endswith("tick")]
    assert len(events) == 5
    for e in events:
        assert e["dur"] >= 0 and e["ts"] > 0 and e["tid"] > 0
        assert e["args"]["node"] == state["nodes"][0]["id"] and e["args"]["executor_pid"] == e["tid"]
    returned = [e for e in cluster.timeline() if e["ph"] == "X" and e["name"].endswith("tick")]
    assert len(returned) == 5


def test_status_and_init_give_the_dashboard_url(cluster):
    url = cluster.api._context().dashboard_url
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    proc = subprocess.run([sys.executable, "-m", "starburst", "status", "--json"], capture_output=True, text=True,
                          timeout=60, check=True)
    st = json.loads(proc.stdout)
    assert st["running"] is True and st["dashboard"] == url and st["tasks_running"] >= 0
    text = subprocess.run([sys.executable, "-m", "starburst", "status"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert f"dashboard {url}" in text


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (.ci/run installs them)")
    return browser, driver, webdriver, Service


@pytest.mark.slow
def test_dashboard_in_a_real_browser_shows_counts_that_change(tmp_path):
    browser, driver_path, webdriver, Service = _chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    home = tmp_path / "home"
    env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
    up = subprocess.run([sys.executable, "-m", "starburst", "up", "--num-cpus", "2"], capture_output=True,
                        text=True, env=env, timeout=60)
    assert up.returncode == 0, up.stderr
    driver = None
    job = None
    try:
        status = subprocess.run([sys.executable, "-m", "starburst", "status"], capture_output=True, text=True,
                                env=env, timeout=60)
        url = [line.split()[-1] for line in status.stdout.splitlines() if "dashboard" in line][0]
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1000"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        driver.get(url)
        wait = WebDriverWait(driver, 30, poll_frequency=0.1)
        text = lambda id_: driver.find_element(By.ID, id_).text  # noqa: E731
        wait.until(lambda d: text("status") == "live" and text("node-count") == "1")
        assert text("tasks-done") == "0" and text("tasks-running") == "0"
        # A job whose tasks wait for a flag file: the page must show them running, then done.
        flag = tmp_path / "go"
        job = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os, time, starburst
            starburst.init()

            @starburst.remote
            def crunch(i):
                while not os.path.exists({str(flag)!r}):
                    time.sleep(0.02)
                print("crunched", i)
                return i

            assert starburst.get([crunch.remote(i) for i in range(6)]) == list(range(6))
        """)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # (Tasks sent ahead to the node count as running: the head can't tell them apart yet.)
        wait.until(lambda d: int(text("tasks-running")) + int(text("tasks-queued")) == 6)
        assert int(text("tasks-running")) >= 2 and text("tasks-done") == "0"
        assert "crunch" in driver.find_element(By.ID, "functions").text
        flag.touch()
        wait.until(lambda d: text("tasks-done") == "6" and text("tasks-running") == "0")
        wait.until(lambda d: all(f"crunched {i}" in text("output") for i in range(6)))
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        if os.environ.get("STARBURST_DOCS_SCREENSHOT"):
            shutil.copy(tmp_path / "dashboard.png", os.environ["STARBURST_DOCS_SCREENSHOT"])
        # Nothing but the head was asked for anything.
        origins = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
        assert origins and all(o.startswith("http://127.0.0.1:") for o in origins), origins
        assert job.wait(60) == 0, job.stderr.read()
    finally:
        if driver is not None:
            driver.quit()
        if job is not None and job.poll() is None:
            job.kill()
        subprocess.run([sys.executable, "-m", "starburst", "down"], env=env, capture_output=True, timeout=60)


@pytest.mark.slow
def test_ray_timeline_through_starburst_run(tmp_path):
    script = tmp_path / "ray_script.py"
    trace = tmp_path / "ray-trace.json"
    script.write_text(textwrap.dedent(f"""
        import ray

        ray.init(num_cpus=1)

        @ray.remote
        def step(i):
            return i

        ray.get([step.remote(i) for i in range(3)])
        ray.timeline(filename={str(trace)!r})
        ray.shutdown()
    """))
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "starburst", "run", str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(trace.read_text())["traceEvents"]
    assert sorted(e["name"] for e in events if e["ph"] == "X") == ["step"] * 3

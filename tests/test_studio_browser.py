"""kotune studio in a real browser: headless Chromium from Debian (scripts/install-system-deps.sh)
driven by Selenium through Debian's chromedriver, against a `kotune studio` process.

One recipe is launched from the Launch page (stopped once, resumed, run to the end);
the other pages are then clicked through on what it produced, as a person would.
Screenshots of every page are written to the test's folder (docs/ holds copies)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, _subprocess_env, free_port

pytestmark = pytest.mark.e2e

RECIPE = """\
# The smallest whole recipe: one document → rule QA → LoRA → doctor → eval.
name: tiny-qa
base_model: builtin:tiny-ko
steps:
  prepare:
    inputs: [policy_plan.txt]
    chunk_chars: 1000
  generate:
    teacher: rule
    per_chunk: 8
  validate:
    min_grounding: 0.5
  split:
    test_size: 0.15
    stratify: category
  train:
    method: lora
    max_steps: 40        # enough for a loss curve (a point every 5 steps); the tests judge the UI, not the model
  doctor:
  eval:
    questions: test
    max_new_tokens: 32
"""


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium or chromedriver not found: run scripts/install-system-deps.sh")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900",
              "--lang=ko-KR"):
        opts.add_argument(a)
    # Both paths given: Selenium Manager downloads nothing.
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model):
    """A ROOT with one recipe, and `kotune studio --root ROOT` serving it."""
    root = tmp_path_factory.mktemp("studio-root")
    (root / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "data" / "policy" / "policy_plan.txt", root / "recipes" / "policy_plan.txt")
    (root / "recipes" / "tiny-qa.yaml").write_text(RECIPE, encoding="utf-8")
    port = free_port()
    log = root.parent / "studio.log"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "kotune", "studio", "--root", str(root), "--port", str(port)],
                                cwd=REPO, env=_subprocess_env(), stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/runs", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"kotune studio did not come up:\n{log.read_text(encoding='utf-8')}")
        time.sleep(0.3)
    yield url, root
    proc.terminate()
    proc.wait(timeout=15)
    # A launched run outlives the studio by design; a failed test must not leave one training.
    for launch in root.glob("runs/*/studio.json"):
        try:
            os.killpg(json.loads(launch.read_text(encoding="utf-8"))["pid"], signal.SIGKILL)
        except (ProcessLookupError, KeyError, ValueError, PermissionError):
            pass


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    yield d
    d.quit()


def _wait(browser, cond, timeout=30.0, what="condition"):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Pages reload themselves when a run's state changes: an element found a moment ago may be gone.
    return WebDriverWait(browser, timeout, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: cond(d), message=what)


def _css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def _status(browser) -> str:
    found = _css(browser, "#status")
    return found[0].get_attribute("data-status") if found else ""


def _shot(browser, root: Path, name: str) -> None:
    browser.save_screenshot(str(root.parent / f"studio-{name}.png"))


@pytest.fixture(scope="module")
def launched(studio, browser):
    """The recipe launched from the Launch page: checked, started, stopped, resumed and
    watched until it finishes, as a person would do it; returns its output folder."""
    from selenium.webdriver.support.ui import Select

    url, root = studio
    browser.get(url + "/launch")
    Select(_css(browser, "#recipe")[0]).select_by_value("recipes/tiny-qa.yaml")
    _css(browser, "#output")[0].send_keys("runs/tiny")
    _css(browser, "#check-btn")[0].click()
    ok = _wait(browser, lambda d: _css(d, "#launch-ok:not([hidden])"), what="the recipe check")[0]
    assert "prepare" in ok.text and "eval" in ok.text
    _shot(browser, root, "launch")
    _css(browser, "#start-btn")[0].click()
    _wait(browser, lambda d: "/run?path=runs%2Ftiny" in d.current_url or "/run?path=runs/tiny" in d.current_url,
          what="the run page after Start")
    assert _status(browser) == "running"
    _css(browser, "#stop-btn")[0].click()
    _wait(browser, lambda d: _status(d) == "stopped", what="stopped after Stop")
    assert _css(browser, "#resume-btn")[0].is_displayed()
    _css(browser, "#resume-btn")[0].click()
    _wait(browser, lambda d: _status(d) == "running", what="running again after Resume")
    _wait(browser, lambda d: _status(d) in ("finished", "failed"), timeout=420, what="the recipe to finish")
    out = root / "runs" / "tiny"
    assert _status(browser) == "finished", (out / "studio.log").read_text(encoding="utf-8")[-3000:]
    return out


def test_launch_smallest_recipe_reaches_finished_and_shows_on_runs(studio, browser, launched):
    url, root = studio
    # Each step done; the log is the kotune run process's own output (it ran twice: stopped, then resumed).
    steps = {row.get_attribute("data-step"): row.find_element("css selector", ".badge").get_attribute("data-status")
             for row in _css(browser, "#steps tr[data-step]")}
    assert steps == {s: "done" for s in ("prepare", "generate", "validate", "split", "train", "doctor", "eval")}
    log = _css(browser, "#log")[0].get_attribute("textContent")
    assert log.count("$ kotune run") == 2 and "[7/7] eval" in log
    state = json.loads((launched / "run.json").read_text(encoding="utf-8"))
    assert all(s["status"] == "done" for s in state["steps"].values())
    browser.get(url + "/runs")
    row = _css(browser, 'tr[data-path="runs/tiny"]')
    assert row, "the launched run is not on the Runs page"
    assert row[0].find_element("css selector", ".run-status").get_attribute("data-status") == "finished"
    _shot(browser, root, "runs")


def test_finished_run_shows_its_loss_curve(studio, browser, launched):
    url, root = studio
    browser.get(url + "/run?path=runs/tiny")
    svg = _wait(browser, lambda d: [s for s in _css(d, "svg.loss") if int(s.get_attribute("data-points") or 0) > 0],
                what="a drawn loss curve")[0]
    history = json.loads((launched / "model" / "kotune.json").read_text(encoding="utf-8"))["history"]
    assert int(svg.get_attribute("data-points")) == sum(1 for h in history if "loss" in h) >= 2
    line = svg.find_element("css selector", "polyline.loss-line")
    assert len(line.get_attribute("points").split()) == int(svg.get_attribute("data-points"))
    assert "eos_in_labels" in browser.page_source  # the doctor's findings for the run
    _shot(browser, root, "run")


def test_data_page_marks_supervised_span_and_eos(studio, browser, launched):
    url, root = studio
    browser.get(url + "/runs")
    _css(browser, 'tr[data-path="runs/tiny"] a[href^="/data"]')[0].click()
    _wait(browser, lambda d: _css(d, "#records .record"), what="records")
    first = _css(browser, "#records .record")[0]
    prompt = first.find_elements("css selector", ".tok-prompt")
    answer = first.find_elements("css selector", ".tok-answer")
    eos = first.find_elements("css selector", ".tok-eos")
    assert prompt and answer and len(eos) == 1
    # The supervised span is the record's answer, and EOS comes right after it.
    record_id = first.get_attribute("data-id")
    row = next(json.loads(l) for l in (launched / "clean.jsonl").read_text(encoding="utf-8").splitlines()
               if json.loads(l)["id"] == record_id)
    assert "".join(a.text for a in answer).strip() == row["output"].strip()
    assert row["instruction"] in "".join(p.text for p in prompt)
    assert eos[0].text == "<|endoftext|>"  # tiny-ko's EOS, shown as a token
    spans = first.find_elements("css selector", ".tokens > span")
    assert spans[-1].get_attribute("class") == "tok-eos"
    # Filter by drop reason: the dropped file's records, each with its reason.
    dropped = [json.loads(l) for l in (launched / "dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    if dropped:
        reason = dropped[0]["drop_reason"]
        browser.get(url + f"/data?path=runs/tiny&source=dropped&reason={reason}")
        shown = _css(browser, "#records .record")
        assert len(shown) == min(20, sum(1 for d in dropped if d["drop_reason"] == reason))
    _shot(browser, root, "data")


def test_eval_filters_to_tuned_worse_than_base(studio, browser, launched):
    from selenium.webdriver.support.ui import Select

    url, root = studio
    rows = [json.loads(l) for l in (launched / "eval" / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    worse = {r["id"] for r in rows if r["answers"]["tuned"]["rougeL"] < r["answers"]["base"]["rougeL"]}
    browser.get(url + "/eval?path=runs/tiny/eval")
    assert len(_css(browser, "#questions .question")) == len(rows)
    Select(_css(browser, "#f-flip")[0]).select_by_value("worse")
    _css(browser, "#f-apply")[0].click()
    _wait(browser, lambda d: "flip=worse" in d.current_url, what="the filtered page")
    shown = _css(browser, "#questions .question")
    assert {q.get_attribute("data-id") for q in shown} == worse
    assert all(q.get_attribute("data-flip") == "worse" for q in shown)
    assert _css(browser, "#metrics")  # the metrics table
    _shot(browser, root, "eval")
    # A question links back to the chunk it was generated from.
    browser.get(url + "/eval?path=runs/tiny/eval")
    first = _css(browser, "#questions .question")[0]
    qid = first.get_attribute("data-id")
    chunk_id = next(r["chunk_id"] for r in rows if r["id"] == qid)
    first.find_element("css selector", "a.chunk-link").click()
    text = _wait(browser, lambda d: _css(d, "#chunk-text"), what="the chunk page")[0].text
    chunks = [json.loads(l) for l in (launched / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert text.strip() == next(c["text"] for c in chunks if c["chunk_id"] == chunk_id).strip()


def test_chat_streams_two_answers_side_by_side(studio, browser, launched):
    url, root = studio
    browser.get(url + "/chat")
    boxes = _css(browser, 'input[name="model"]')
    values = [b.get_attribute("value") for b in boxes]
    assert values == ["base:builtin:tiny-ko", "run:runs/tiny/model"]
    for b in boxes:
        if not b.is_selected():
            b.click()
    _css(browser, "#question")[0].send_keys("국가초고성능컴퓨팅 기본계획은 무엇인가요?")
    _css(browser, "#ask")[0].click()
    cols = _wait(browser, lambda d: [c for c in _css(d, "#answers .chat-col") if c.get_attribute("data-state") == "done"]
                 if len(_css(d, "#answers .chat-col[data-state=done]")) == 2 else None, timeout=120,
                 what="two finished answers")
    assert [c.get_attribute("data-model") for c in cols] == values
    for c in cols:
        assert c.find_element("css selector", ".text").text.strip()
        assert int(c.get_attribute("data-pieces")) >= 2  # streamed piece by piece, not in one go
        assert "kotune" in c.find_element("css selector", ".tmpl").text  # both asked with the run's template
    _shot(browser, root, "chat")

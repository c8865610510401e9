#!/usr/bin/env python3
"""test_chat_page.py - the chat page `tessera serve` returns at / works in a real browser.

Usage: test_chat_page.py TESSERA_BINARY ARTIFACTS_DIR   (registered in CMakeLists.txt)

Makes a tiny model offline (`tessera init --model tiny`: its byte-level vocabulary needs no
tokenizer file), starts `tessera serve --port 0 --api-key K` and headless Chromium, and drives
the page over the DevTools protocol (through --remote-debugging-pipe, so the python standard
library is enough) as a user would, with mouse clicks, typed text and the Enter key: sets the
temperature to 0, sends a message without the key (the page must show the server's error), types
the key, sends another. It watches that answer grow (at least two different non-empty states,
each a prefix of the next: streaming, not one final render) until the page marks it done, and
checks what the page showed against independent oracles:
  - the server's own error messages, asked directly without the key;
  - /metrics counted exactly the prompt tokens of one chat turn holding the second message under
    the DeepSeek chat template (byte-level: one token per UTF-8 byte): the typed text arrived,
    and the refused turn neither reached the engine nor stayed in the conversation;
  - the same conversation, streamed greedily by this script with its own SSE parser, yields
    exactly the text the page shows.
Screenshots (chat_page.png; chat_page_streaming.png, taken mid-answer), what the page showed
(session.json) and both programs' logs go to ARTIFACTS_DIR.

Exit codes: 0 pass, 1 fail, 77 skip (CTest SKIP_RETURN_CODE) when Chromium is not installed
(Debian: apt-get install chromium; TS_CHROMIUM=PATH picks another binary).
"""
import base64
import fcntl
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SKIP = 77
MESSAGE = "hello, tessera"
MESSAGE_WITHOUT_KEY = "is anyone there?"
API_KEY = "sk-chat-page-test"
# the server's --max-output-tokens: an answer that streams for a while, even on a fast machine (64
# tokens came in one read once decoding got faster: about 35 ms); with the 72-byte prompt it fills
# the 256-position context
MAX_TOKENS = 180
DEADLINE_S = 90  # the whole test; it normally takes a few seconds
# DeepSeek-V3's chat template (serve.h) for one user turn, as the server formats it
TEMPLATE = "<\uff5cbegin\u2581of\u2581sentence\uff5c><\uff5cUser\uff5c>{}<\uff5cAssistant\uff5c>"


class Failure(Exception):
    pass


def deadline_left(start):
    left = DEADLINE_S - (time.monotonic() - start)
    if left <= 0:
        raise Failure("the test ran past its %d s deadline" % DEADLINE_S)
    return left


# ---------------------------------------------------------------- the DevTools protocol

class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ending in NUL,
    commands written to the browser's fd 3, answers and events read from its fd 4."""

    def __init__(self, to_browser, from_browser):
        self.w, self.r = to_browser, from_browser
        self.buf = b""
        self.last_id = 0
        self.events = []

    def _read(self, timeout):
        end = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise Failure("DevTools: no message from chromium within %.0f s" % timeout)
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise Failure("DevTools: chromium closed the pipe (see chromium.log)")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def close(self):
        os.close(self.w)
        os.close(self.r)

    def call(self, method, params=None, session=None, timeout=20):
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.w, data):]
        while True:
            answer = self._read(timeout)
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise Failure("DevTools %s: %s" % (method, answer["error"]))
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method, session, timeout=20):
        end = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._read(max(0.0, end - time.monotonic())))


class Page:
    """One tab, attached with a flat session; what a user does, as input events."""

    def __init__(self, devtools):
        self.dt = devtools
        target = devtools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = devtools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")  # reports the page's uncaught exceptions (errors())
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 900, "height": 640, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method, params=None, timeout=20):
        return self.dt.call(method, params, self.session, timeout)

    def open(self, url):
        self.call("Page.navigate", {"url": url})
        self.dt.wait_event("Page.loadEventFired", self.session)

    def errors(self):
        """The page's uncaught script exceptions so far."""
        return [ev["params"]["exceptionDetails"].get("exception", {}).get("description") or
                ev["params"]["exceptionDetails"].get("text")
                for ev in self.dt.events
                if ev.get("method") == "Runtime.exceptionThrown" and ev.get("sessionId") == self.session]

    def eval(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise Failure("page script failed: %s" % result["exceptionDetails"])
        return result["result"].get("value")

    def click(self, element_id):
        box = self.eval("(r=>[r.x+r.width/2,r.y+r.height/2])(document.getElementById(%s)"
                        ".getBoundingClientRect())" % json.dumps(element_id))
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    def select_all(self):
        self.call("Input.dispatchKeyEvent", {"type": "rawKeyDown", "key": "a", "code": "KeyA", "modifiers": 2,
                                             "windowsVirtualKeyCode": 65, "commands": ["selectAll"]})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "a", "code": "KeyA", "modifiers": 2,
                                             "windowsVirtualKeyCode": 65})

    def type_text(self, text):
        self.call("Input.insertText", {"text": text})

    def press_enter(self):
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", dict(key, type="keyDown", text="\r"))
        self.call("Input.dispatchKeyEvent", dict(key, type="keyUp"))

    def screenshot(self):
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])


# ---------------------------------------------------------------- processes

def high_fd(fd):
    """A duplicate of fd numbered 10 or above, so that placing the browser's pipe ends on its
    fds 3 and 4 cannot overwrite one another."""
    dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return dup


def start_chromium(binary, profile, log):
    to_browser_r, to_browser_w = map(high_fd, os.pipe())
    from_browser_r, from_browser_w = map(high_fd, os.pipe())

    def on_fds_3_and_4():
        os.dup2(to_browser_r, 3)
        os.dup2(from_browser_w, 4)

    args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--remote-debugging-pipe", "--user-data-dir=" + profile, "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--hide-scrollbars", "about:blank"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(3, 4),
                            preexec_fn=on_fds_3_and_4, start_new_session=True)
    os.close(to_browser_r)
    os.close(from_browser_w)
    return proc, DevTools(to_browser_w, from_browser_r)


def start_server(tessera, model, log, start):
    proc = subprocess.Popen([tessera, "serve", "--model", model, "--port", "0", "--slots", "1", "--threads", "1",
                             "--context", "256", "--max-output-tokens", str(MAX_TOKENS), "--api-key", API_KEY],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = queue.Queue()

    def forward_lines():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=forward_lines, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=min(30.0, deadline_left(start)))
        except queue.Empty:
            line = ""
        if not line:
            raise Failure("tessera serve printed no 'listening on' line (exit status %s; see serve.log)" % proc.poll())
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return proc, found.group(1)


def stop(proc, name, problems, group=False, check_exit=False):
    """Ends a process this test started with SIGTERM (its whole process group when `group`):
    an exit status other than 0 is a failure when `check_exit` (for tessera serve: a crash, or
    a leak report under ASan)."""
    if proc.poll() is None:
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
            proc.wait()
            problems.append("%s did not exit within 15 s of SIGTERM" % name)
            return
    if group:  # the browser's helpers (renderer, zygote) must not outlive it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if check_exit and proc.returncode != 0:
        problems.append("%s exited with %d (see its log)" % (name, proc.returncode))


# ---------------------------------------------------------------- the oracles

def metric(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    found = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    if not found:
        raise Failure("/metrics has no %s" % name)
    return float(found.group(1))


def post(base, path, body, key=API_KEY):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.urlopen(urllib.request.Request(base + path, data, headers), timeout=60)


def error_message(base, path):
    """The message of the error the server answers at path without the API key."""
    try:
        post(base, path, {"messages": [{"role": "user", "content": MESSAGE}]} if "chat" in path else None, key=None)
    except urllib.error.HTTPError as e:
        return json.loads(e.read())["error"]["message"]
    raise Failure("%s answered without the API key" % path)


def streamed_reply(base, model, text):
    """The answer to one user turn, greedy, streamed and parsed here independently of the page."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True, "temperature": 0}
    raw = post(base, "/v1/chat/completions", body).read().decode()
    reply, done = "", False
    for event in raw.split("\n\n"):
        if event == "data: [DONE]":
            done = True
        elif event.startswith("data: "):
            delta = json.loads(event[6:])["choices"][0]["delta"]
            reply += delta.get("content") or ""
    if not done:
        raise Failure("the reference stream did not end with [DONE]")
    return reply


# ---------------------------------------------------------------- the test

# Records, inside the page, every distinct non-empty text of the log's Nth message, with the time:
# a DOM observer sees each render, however fast the tokens come.
RECORD_ANSWER = """if (window.recorder) recorder.disconnect();
window.seen = [];
window.recorder = new MutationObserver(() => {
  const m = document.querySelector('#log .m:nth-child(N)'), last = seen[seen.length - 1];
  if (m && m.textContent && (!last || last.text !== m.textContent))
    seen.push({ms: Math.round(performance.now()), text: m.textContent});
});
recorder.observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});"""


def wait_until(page, expression, start, done=bool):
    """Polls a page expression until done(value); returns the value."""
    while True:
        value = page.eval(expression)
        if done(value):
            return value
        deadline_left(start)
        time.sleep(0.03)


def ask(page, message, nth, start, snapshot=None):
    """Types a message into the box, presses Enter and waits until the page marks its answer (the
    log's nth message) done or failed; saves a screenshot taken while it streamed in `snapshot`.
    Returns the answer's final state and text, and the texts it showed on the way with their
    times in ms from the first."""
    page.click("q")
    page.type_text(message)
    page.eval(RECORD_ANSWER.replace("(N)", "(%d)" % nth))
    page.press_enter()
    state_of = "(m=>m&&m.dataset.state)(document.querySelector('#log .m:nth-child(%d)'))" % nth
    if snapshot:  # a picture of the answer half-written, when the capture beat its end
        wait_until(page, "seen.length", start)
        png = page.screenshot()
        if page.eval(state_of) == "streaming":
            with open(snapshot, "wb") as f:
                f.write(png)
    state = wait_until(page, state_of, start, lambda s: s and s != "streaming")
    seen = page.eval("seen")
    seen = [dict(s, ms=s["ms"] - seen[0]["ms"]) for s in seen] if seen else []
    return state, page.eval("document.querySelector('#log .m:nth-child(%d)').textContent" % nth), seen


def session(page, base, artifacts, start):
    """What a user does: opens the page (the model list needs the API key, not given yet), sets
    temperature 0 (greedy, so that the oracle can reproduce the answer), sends a message without
    the key (an error), types the key, sends another; what the page showed, for check_session."""
    seen = {}
    model = "document.getElementById('model').textContent"
    page.open(base + "/")
    seen["model without key"] = wait_until(page, model, start)
    page.click("t")
    page.select_all()
    page.type_text("0")
    seen["refused"] = ask(page, MESSAGE_WITHOUT_KEY, 2, start)
    page.click("k")
    page.type_text(API_KEY)
    page.click("q")  # leaving the key field asks for the model list again
    seen["model"] = wait_until(page, model, start, lambda m: m != seen["model without key"])
    seen["answer"] = ask(page, MESSAGE, 4, start, os.path.join(artifacts, "chat_page_streaming.png"))
    with open(os.path.join(artifacts, "chat_page.png"), "wb") as f:
        f.write(page.screenshot())
    seen["user messages"] = page.eval("[...document.querySelectorAll('#log .user')].map(m=>m.textContent)")
    seen["message box"] = page.eval("document.getElementById('q').value")
    seen["script errors"] = page.errors()
    with open(os.path.join(artifacts, "session.json"), "w") as f:
        json.dump(seen, f, indent=1, ensure_ascii=False)
    return seen


def expect(problems, ok, what, *args):
    if not ok:
        problems.append(what % args)


def check_session(base, seen):
    """The page's observations against the server, asked directly, and the metrics."""
    problems = []
    refused = error_message(base, "/v1/models")
    expect(problems, seen["model without key"] == "(no model list: %s)" % refused,
           "without the key the model list shows %r, not the server's %r", seen["model without key"], refused)
    state, text, _ = seen["refused"]
    refused = error_message(base, "/v1/chat/completions")
    expect(problems, (state, text) == ("error", "Error: " + refused),
           "without the key the answer is %r in state %r, not the server's error %r", text, state, refused)
    expect(problems, seen["model"] == "tiny", "with the key the page shows the model as %r", seen["model"])
    expect(problems, seen["user messages"] == [MESSAGE_WITHOUT_KEY, MESSAGE],
           "the user's messages on the page are %r", seen["user messages"])
    expect(problems, seen["message box"] == "", "the message box was not cleared after sending")
    expect(problems, not seen["script errors"], "the page's script failed: %r", seen["script errors"])

    state, text, shown = seen["answer"]
    states = [s["text"] for s in shown]
    expect(problems, state == "done", "the answer ended in state %r: %r", state, text)
    expect(problems, len(states) >= 2, "saw %d non-empty state(s) of the answer, not a stream: %r",
           len(states), states)
    expect(problems, all(b.startswith(a) for a, b in zip(states, states[1:])),
           "the answer did not grow by appending: %r", states)
    # The refused turn must not have reached the engine, nor stayed in the conversation.
    prompt_tokens = len(TEMPLATE.format(MESSAGE).encode())
    counted = metric(base, "tessera_prompt_tokens_total")
    generated = metric(base, "tessera_generation_tokens_total")
    expect(problems, counted == prompt_tokens,
           "/metrics counted %g prompt tokens, not the %d of one chat turn with the typed message",
           counted, prompt_tokens)
    expect(problems, 1 <= generated <= MAX_TOKENS, "/metrics counted %g generated tokens, not 1..%d",
           generated, MAX_TOKENS)
    expected = streamed_reply(base, "tiny", MESSAGE)
    expect(problems, text == expected, "the page shows %r, the server streams %r", text, expected)
    print("the answer streamed through %d states in %d ms, %g tokens: %r"
          % (len(states), shown[-1]["ms"] if shown else 0, generated, text))
    return problems


def run(tessera, artifacts, chromium, start):
    problems = []
    serve = browser = None
    with tempfile.TemporaryDirectory(prefix="tessera-chat-page-") as tmp, \
            open(os.path.join(artifacts, "serve.log"), "w") as serve_log, \
            open(os.path.join(artifacts, "chromium.log"), "w") as chromium_log:
        try:
            model = os.path.join(tmp, "tiny")
            subprocess.run([tessera, "init", "--model", "tiny", "--out", model], check=True,
                           stdout=subprocess.DEVNULL, timeout=deadline_left(start))
            serve, base = start_server(tessera, model, serve_log, start)
            browser, devtools = start_chromium(chromium, os.path.join(tmp, "profile"), chromium_log)
            page = Page(devtools)
            problems += check_session(base, session(page, base, artifacts, start))
        except (Failure, OSError, subprocess.SubprocessError) as e:
            problems.append(str(e))
        finally:
            if browser is not None:
                try:
                    devtools.call("Browser.close", timeout=5)
                except (Failure, OSError):
                    pass
                devtools.close()
                stop(browser, "chromium", problems, group=True)
            if serve is not None:
                stop(serve, "tessera serve", problems, check_exit=True)
    return problems


def main(argv):
    if len(argv) != 3:
        print("usage: test_chat_page.py TESSERA_BINARY ARTIFACTS_DIR", file=sys.stderr)
        return 2
    tessera, artifacts = os.path.abspath(argv[1]), os.path.abspath(argv[2])
    chromium = os.environ.get("TS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("SKIP: chromium is not installed (Debian: apt-get install chromium; or set TS_CHROMIUM)")
        return SKIP
    os.makedirs(artifacts, exist_ok=True)
    for old in ("chat_page.png", "chat_page_streaming.png", "session.json"):
        if os.path.exists(os.path.join(artifacts, old)):
            os.remove(os.path.join(artifacts, old))
    start = time.monotonic()
    problems = run(tessera, artifacts, chromium, start)
    for p in problems:
        print("FAIL:", p)
    print("artifacts (screenshot, logs):", artifacts)
    print("%s in %.1f s" % ("FAILED" if problems else "ok", time.monotonic() - start))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

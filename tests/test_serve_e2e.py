#!/usr/bin/env python3
"""test_serve_e2e.py - end-to-end tests of `tessera serve` and `tessera chat` as real processes.

Usage: python3 tests/test_serve_e2e.py PATH/TO/tessera   (CTest passes the built binary)

Builds a model directory offline: `tessera init --model tiny`, a BPE tokenizer trained by
`tessera tokenizer train` on a few sentences (256 bytes + DeepSeek's four chat tokens + 4 merges =
the tiny preset's 264 ids), and one edit to the random weights: the rows of head.weight of every
token that is not made of lowercase letters and spaces are zeroed, so the untrained model still
answers in clean ASCII (a zero logit loses to the largest of ~30 random ones) and texts compare
exactly through JSON. Then, against `tessera serve --port 0`:
  - completions and chat completions, plain and SSE: shapes, framing, [DONE], usage,
    finish_reason; the streamed text equals the plain one (greedy);
  - 32 concurrent streaming greedy requests all complete, each equal to the same request alone;
  - n choices: greedy ones repeat the single answer, seeded sampled ones are reproducible and differ;
  - logprobs (completions and chat, plain and streamed): greedy tokens are their positions' most
    likely, the alternatives' probabilities sum to at most 1, tokens spell the text; with echo the
    prompt's positions carry logprobs whose best is what greedy generation after that prefix
    gives, streamed as well; logit_bias forcing one token makes every generated token that one;
  - `tessera chat` with two turns piped in: deterministic, and each reply equals the server's
    chat completion of the same conversation (the server prefills from scratch; chat reuses its
    KV cache across turns);
  - a few hundred malformed requests: each gets a 4xx JSON error or a clean close; the server
    stays up, and its RSS stays within a bound after warm-up (not under AddressSanitizer, whose
    quarantine holds freed memory on purpose);
  - `tessera bench serve --url` at 1 and 4 streams: no errors, and the generated tokens it
    counts equal the growth of the server's tessera_generation_tokens_total;
  - SIGTERM: exit code 0.
Python standard library only."""
import http.client
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SPECIALS = [BOS, EOS, "<｜User｜>", "<｜Assistant｜>"]
MAX_TOKENS = 12
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr, flush=True)
    return cond


def run(tessera, *args, **kw):
    r = subprocess.run([tessera, *args], capture_output=True, timeout=120, **kw)
    if r.returncode != 0:
        sys.exit(f"tessera {' '.join(args)} failed ({r.returncode}):\n{r.stderr.decode(errors='replace')}")
    return r


# ---------------------------------------------------------------- the model directory

def ascii_only_head(model_dir):
    """Zeroes head.weight's rows of the tokens that are not lowercase letters / spaces (and EOS)."""
    vocab = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))["model"]["vocab"]
    keep = {i for tok, i in vocab.items() if tok and all(c == "Ġ" or "a" <= c <= "z" for c in tok)}
    keep.add(SPECIALS.index(EOS))
    path = os.path.join(model_dir, "model.safetensors")
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        info = json.loads(f.read(n))["head.weight"]
        assert info["dtype"] == "F32"
        rows, cols = info["shape"]
        for r in range(rows):
            if r not in keep:
                f.seek(8 + n + info["data_offsets"][0] + 4 * r * cols)
                f.write(b"\0" * 4 * cols)
    return len(keep)


def make_model(tessera, root):
    model = os.path.join(root, "tiny")
    run(tessera, "init", "--model", "tiny", "--out", model, "--seed", "7")
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("the quick brown fox jumps over the lazy dog. hello there, hello world. " * 40)
    run(tessera, "tokenizer", "train", "--input", corpus, "--out", model, "--vocab-size", "264", "--special", *SPECIALS,
        "--bos", BOS, "--eos", EOS)
    ascii_only_head(model)
    return model


# ---------------------------------------------------------------- the server process

class Server:
    def __init__(self, tessera, model):
        self.proc = subprocess.Popen(
            [tessera, "serve", "--model", model, "--port", "0", "--model-name", "tiny", "--slots", "8", "--context", "256",
             "--max-concurrent", "64", "--max-output-tokens", "64", "--threads", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            m = re.search(r"listening on http://([^:]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        if not self.port:
            self.proc.kill()
            sys.exit("tessera serve did not print 'listening on http://H:P':\n" + self.proc.stderr.read().decode())
        self.stderr_lines = []  # kept (the pipe drained) to show when a check fails
        threading.Thread(target=lambda: self.stderr_lines.extend(self.proc.stderr), daemon=True).start()

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def request(self, method, path, body=None, timeout=60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.status, r.getheader("Content-Type") or "", r.read()
        c.close()
        return out

    def post(self, path, body):
        status, _, data = self.request("POST", path, body)
        return status, json.loads(data) if data else None


# ---------------------------------------------------------------- responses

def sse_events(raw):
    """The events of an SSE body ("data: X\\n\\n" each; ':' comments skipped), framing checked."""
    text = raw.decode()
    check(text.endswith("\n\n"), "SSE body ends with a blank line")
    events = []
    for block in text.split("\n\n")[:-1]:
        if block.startswith(":"):
            continue
        check(block.startswith("data: ") and "\n" not in block, f"SSE event framing: {block[:80]!r}")
        events.append(block[6:])
    check(events and events[-1] == "[DONE]", "SSE stream ends with data: [DONE]")
    return [json.loads(e) for e in events[:-1]]


def streamed(srv, path, body):
    """(text, finish_reason, usage) of a streaming request, with every chunk's shape checked."""
    status, ctype, raw = srv.request("POST", path, dict(body, stream=True, stream_options={"include_usage": True}))
    check(status == 200 and ctype.startswith("text/event-stream"), f"{path} stream: {status} {ctype}")
    chat = "chat" in path
    text, finish, usage = "", None, None
    for i, ev in enumerate(sse_events(raw)):
        check(ev.get("object") == ("chat.completion.chunk" if chat else "text_completion"), f"chunk object: {ev}")
        if ev.get("usage"):
            usage = ev["usage"]
            continue
        ch = ev["choices"][0]
        if chat and i == 0:
            check(ch["delta"].get("role") == "assistant", f"first chat chunk carries the role: {ev}")
        text += (ch["delta"].get("content") or "") if chat else ch["text"]
        finish = ch.get("finish_reason") or finish
    return text, finish, usage


def check_usage(u, max_tokens, what):
    check(u and u["prompt_tokens"] > 0 and 0 <= u["completion_tokens"] <= max_tokens
          and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], f"{what} usage: {u}")


# ---------------------------------------------------------------- tests

def test_basics(srv):
    status, _, data = srv.request("GET", "/health")
    check(status == 200, f"/health: {status}")
    status, _, data = srv.request("GET", "/v1/models")
    models = json.loads(data)
    check(status == 200 and models["data"][0]["id"] == "tiny", f"/v1/models: {models}")


def test_completions(srv):
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": MAX_TOKENS, "temperature": 0}
    status, r = srv.post("/v1/completions", body)
    check(status == 200 and r["object"] == "text_completion", f"completion: {status} {r}")
    text, finish = r["choices"][0]["text"], r["choices"][0]["finish_reason"]
    check(finish in ("stop", "length") and re.fullmatch(r"[a-z ]*", text), f"completion text {text!r}, {finish}")
    check_usage(r["usage"], MAX_TOKENS, "completion")
    check((finish == "length") == (r["usage"]["completion_tokens"] == MAX_TOKENS), f"finish_reason vs usage: {r}")
    s_text, s_finish, s_usage = streamed(srv, "/v1/completions", body)
    check((s_text, s_finish) == (text, finish), f"streamed {s_text!r} {s_finish} != plain {text!r} {finish}")
    check(s_usage == r["usage"], f"streamed usage {s_usage} != {r['usage']}")


def chat_completion(srv, messages, max_tokens=MAX_TOKENS):
    status, r = srv.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": max_tokens,
                                                  "temperature": 0})
    check(status == 200 and r["object"] == "chat.completion", f"chat completion: {status} {r}")
    msg = r["choices"][0]["message"]
    check(msg["role"] == "assistant" and r["choices"][0]["finish_reason"] in ("stop", "length"), f"chat: {r}")
    check_usage(r["usage"], max_tokens, "chat")
    return msg["content"]


def test_chat_completions(srv):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    text = chat_completion(srv, messages)
    s_text, s_finish, s_usage = streamed(srv, "/v1/chat/completions", {"model": "tiny", "messages": messages,
                                                                       "max_tokens": MAX_TOKENS, "temperature": 0})
    check(s_text == text and s_finish in ("stop", "length"), f"streamed chat {s_text!r} != {text!r}")
    check_usage(s_usage, MAX_TOKENS, "streamed chat")


def test_logprobs(srv):
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 5}
    status, r = srv.post("/v1/completions", body)
    ch = r["choices"][0] if status == 200 else {}
    lp = ch.get("logprobs") or {}
    tokens = lp.get("tokens", [])
    check(status == 200 and "".join(tokens) == ch["text"] and len(tokens) == r["usage"]["completion_tokens"],
          f"logprobs tokens spell the text: {r}")
    for i, tok in enumerate(tokens):
        top, own = lp["top_logprobs"][i], lp["token_logprobs"][i]
        check(own <= 0 and tok in top and len(top) <= 6 and abs(own - max(top.values())) < 1e-6,
              f"position {i}: greedy's token {tok!r} ({own}) is the most likely of {top}")
        check(sum(2.718281828459045 ** v for v in top.values()) <= 1 + 1e-5, f"position {i}: probabilities {top}")
        check(lp["text_offset"][i] == len("".join(tokens[:i]).encode()), f"text_offset {i}: {lp['text_offset']}")
    status, ctype, raw = srv.request("POST", "/v1/completions", dict(body, stream=True))
    s_tokens, s_lps = [], []
    for ev in sse_events(raw):
        l = ev["choices"][0].get("logprobs")
        if l:
            s_tokens += l["tokens"]
            s_lps += l["token_logprobs"]
    check((s_tokens, s_lps) == (tokens, lp.get("token_logprobs")), f"streamed logprobs {s_tokens} {s_lps} != {lp}")

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "logprobs": True, "top_logprobs": 3}
    status, r = srv.post("/v1/chat/completions", chat)
    content = ((r or {}).get("choices", [{}])[0].get("logprobs") or {}).get("content", [])
    check(status == 200 and "".join(c["token"] for c in content) == r["choices"][0]["message"]["content"] and
          all(bytes(c["bytes"]).decode() == c["token"] and len(c["top_logprobs"]) == 3 and
              c["top_logprobs"][0]["token"] == c["token"] for c in content), f"chat logprobs: {r}")

    # echo: the prompt's logprobs, position k from the logits after the first k tokens - so the
    # most likely alternative there is what greedy generation after those k tokens picks
    ids = [0, 37, 90, 12, 150, 77, 200]
    echo_body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 5, "echo": True}
    status, r = srv.post("/v1/completions", echo_body)
    lp = r["choices"][0]["logprobs"] if status == 200 else {}
    check(status == 200 and len(lp["tokens"]) >= len(ids) and lp["token_logprobs"][0] is None and
          lp["top_logprobs"][0] is None and all(v is not None and v <= 0 for v in lp["token_logprobs"][1:len(ids)]) and
          r["choices"][0]["text"].startswith("".join(lp["tokens"][:len(ids)])), f"echo with logprobs: {r}")
    status, ctype, raw = srv.request("POST", "/v1/completions", dict(echo_body, stream=True))
    s_text, s_tokens, s_lps = "", [], []
    for ev in sse_events(raw):
        ch = ev["choices"][0]
        s_text += ch["text"]
        if ch.get("logprobs"):
            s_tokens += ch["logprobs"]["tokens"]
            s_lps += ch["logprobs"]["token_logprobs"]
    check((s_text, s_tokens, s_lps) == (r["choices"][0]["text"], lp.get("tokens"), lp.get("token_logprobs")),
          f"streamed echo {s_text!r} {s_tokens} {s_lps} != {r}")
    compared = 0
    for k in range(1, len(ids)):
        status, g = srv.post("/v1/completions", {"model": "tiny", "prompt": ids[:k], "max_tokens": 1, "temperature": 0,
                                                 "logprobs": 0})
        glp = g["choices"][0]["logprobs"] if status == 200 else None
        if not glp or not glp["tokens"]:
            continue  # the model stopped at once
        top = lp["top_logprobs"][k]
        check(abs(max(top.values()) - glp["token_logprobs"][0]) < 1e-4 and glp["tokens"][0] in top,
              f"echo position {k}: top {top} vs greedy after {k} tokens {glp}")
        compared += 1
    check(compared >= 3, f"echo compared at {compared} positions")

    forced = []
    for x in (101, 150):  # (chat's logprobs give each token's exact bytes)
        others = {str(i): -100 for i in range(264) if i != x}
        status, r = srv.post("/v1/chat/completions", dict(chat, logit_bias=others, max_tokens=4))
        toks = [c["bytes"] for c in r["choices"][0]["logprobs"]["content"]] if status == 200 else []
        check(len(toks) == 4 and all(t == toks[0] for t in toks), f"logit_bias forces token {x}: {r}")
        forced.append(toks[:1])
    check(forced[0] != forced[1], f"two forced ids give two tokens: {forced}")


def test_choices(srv):
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": MAX_TOKENS, "temperature": 0}
    status, one = srv.post("/v1/completions", body)
    status2, two = srv.post("/v1/completions", dict(body, n=2))
    check(status == status2 == 200 and [c["text"] for c in two["choices"]] == [one["choices"][0]["text"]] * 2 and
          [c["index"] for c in two["choices"]] == [0, 1], f"greedy n=2 repeats n=1's text: {two}")
    sampled = dict(body, temperature=1.0, n=3, seed=5, logprobs=0)
    runs = [srv.post("/v1/completions", sampled)[1] for _ in range(2)]
    texts = [[c["text"] for c in r["choices"]] for r in runs]
    check(texts[0] == texts[1] and len(set(texts[0])) > 1, f"seeded n=3: reproducible, choices differ: {texts}")
    tokens = sum(len(c["logprobs"]["tokens"]) for c in runs[0]["choices"])
    check(runs[0]["usage"]["completion_tokens"] == tokens, f"n=3 usage counts every choice's tokens ({tokens}): {runs[0]}")


def test_concurrent(srv):
    prompts = [f"the {w} fox" for w in ("quick", "lazy", "brown", "old", "red", "shy", "wild", "tame")]
    alone = {p: streamed(srv, "/v1/completions", {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0})[0]
             for p in prompts}
    results = [None] * 32

    def client(i):
        try:
            results[i] = streamed(srv, "/v1/completions", {"prompt": prompts[i % 8], "max_tokens": MAX_TOKENS,
                                                           "temperature": 0})[0]
        except Exception as e:  # noqa: BLE001 - reported as a mismatch below
            results[i] = f"error: {e}"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = [(i, results[i], alone[prompts[i % 8]]) for i in range(32) if results[i] != alone[prompts[i % 8]]]
    check(not bad, f"32 concurrent streams: {len(bad)} differ from the same request alone: {bad[:3]}")


def test_chat_cli(tessera, model, srv):
    turns = ["hello there", "the lazy dog"]
    args = [tessera, "chat", "--model", model, "--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--threads", "2"]
    outs = [subprocess.run(args, input=("\n".join(turns) + "\n").encode(), capture_output=True, timeout=120)
            for _ in range(2)]
    for r in outs:
        check(r.returncode == 0, f"tessera chat exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    check(outs[0].stdout == outs[1].stdout, "tessera chat at temperature 0 is deterministic")
    replies = outs[0].stdout.decode().split("\n")
    check(len(replies) == 3 and replies[2] == "", f"two replies, one line each: {replies}")
    stats = re.findall(r"\[(\d+) tokens in [\d.]+ s, [\d.]+ tokens/s; prompt: (\d+) new tokens in [\d.]+ s, (\d+) cached\]",
                       outs[0].stderr.decode())
    check(len(stats) == 2 and int(stats[1][2]) > 0, f"second turn reuses the cache: {stats}")
    history = []
    for turn, reply in zip(turns, replies):
        history.append({"role": "user", "content": turn})
        want = chat_completion(srv, history)
        check(reply == want, f"chat reply {reply!r} != server's {want!r} for {history}")
        history.append({"role": "assistant", "content": want})


def fuzz_cases(rng):
    """(name, raw request bytes or None, method, path, body) for a few hundred malformed requests."""
    good = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    wrong = {"prompt": [123.5, {}, True, None, [1, "a"], [-5], [10 ** 9]], "max_tokens": ["ten", -1, 0, 1.5, 10 ** 12, 65],
             "temperature": ["hot", -1, []], "top_p": [2, -0.5, "x"], "n": [0, 17, "two"], "stream": ["yes", 1],
             "stop": [5, [1, 2], ["a"] * 9], "seed": ["x", 1.5], "model": [5, "nope", "", ["tiny"]], "logprobs": [25, -1, "x"],
             "logit_bias": [5, [1], {"x": 1}, {"1": 500}, {"1": "a"}, {"100000": 1}],
             "stream_options": [5, {"include_usage": "yes"}], "frequency_penalty": [9, "x"], "top_k": [-2, "x"]}
    bad_messages = ["hi", [], [{"role": 5}], [{"role": "user"}], [{"role": "robot", "content": "x"}],
                    [{"role": "user", "content": [{"type": "image_url"}]}], [{"role": "user", "content": 5}], None]
    bodies = [b"", b"{", b"[]", b"null", b"123", b'"str"', b'{"prompt":', b"{'prompt': 'x'}", b'{"prompt": "x",}',
              b"\xff\xfe\x00garbage", b'{"prompt": "\\ud800"', b"{" * 5000 + b"}" * 5000]
    cases = []
    for path in ("/v1/completions", "/v1/chat/completions"):
        for b in bodies:
            cases.append((f"bad json {b[:20]!r}", None, "POST", path, b))
    for field, values in wrong.items():
        for v in values:
            for base, path in ((good, "/v1/completions"), (chat, "/v1/chat/completions")):
                if field == "prompt" and base is chat:
                    continue  # chat requests ignore "prompt"
                cases.append((f"{field}={v!r}", None, "POST", path, json.dumps(dict(base, **{field: v})).encode()))
    for v in bad_messages:
        cases.append((f"messages={v!r}", None, "POST", "/v1/chat/completions", json.dumps(dict(chat, messages=v)).encode()))
    cases.append(("prompt too long", None, "POST", "/v1/completions", json.dumps(dict(good, prompt="hello " * 400)).encode()))
    for _ in range(3):
        cases.append(("huge body", None, "POST", "/v1/completions", b'{"prompt": "' + b"a" * (2 << 20) + b'"}'))
    for method, path in (("GET", "/v1/completions"), ("DELETE", "/health"), ("POST", "/nope"), ("GET", "/v1/nope"),
                         ("PUT", "/v1/models")):
        cases.append((f"{method} {path}", None, method, path, None))
    while len(cases) < 240:  # random mutations of a good body: bytes flipped, cut or inserted
        b = bytearray(json.dumps(rng.choice([good, chat])).encode())
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                del b[i:i + rng.randint(1, 5)]
            else:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        cases.append(("mutated", None, "POST", rng.choice(["/v1/completions", "/v1/chat/completions"]), bytes(b)))
    for i in range(40):  # raw garbage and half requests, then a disconnect
        kind = i % 4
        if kind == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        elif kind == 1:
            raw = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b'{"prompt": "'
        elif kind == 2:
            raw = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le"
        else:
            raw = b"GET / HTTP/1.1\r\n" + b"X-Junk: " + b"z" * rng.randint(1, 20000) + b"\r\n"
        cases.append((f"raw {kind}", raw, None, None, None))
    return cases


def raw_exchange(srv, raw, half):
    """Sends raw bytes; for a half request closes at once. Returns the status line's code or None."""
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    try:
        s.sendall(raw)
        if half:
            return None
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else (None if not data else -1)
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        return None
    finally:
        s.close()


def test_fuzz(srv, sanitized):
    cases = fuzz_cases(random.Random(1234))
    rss_warm = None
    for n, (name, raw, method, path, body) in enumerate(cases):
        if n == 60:
            rss_warm = srv.rss_kib()
        if raw is not None:
            code = raw_exchange(srv, raw, name in ("raw 1", "raw 2"))
            check(code is None or 400 <= code < 500, f"fuzz {name}: status {code}")
            continue
        try:
            status, ctype, data = srv.request(method, path, body, timeout=30)
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            continue  # a clean close
        ok = 400 <= status < 500 and ctype.startswith("application/json")
        try:
            err = json.loads(data)["error"]
            ok = ok and isinstance(err["message"], str) and isinstance(err["type"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok and status == 200 and name == "mutated":
            continue  # a mutation that left a valid request
        check(ok, f"fuzz {name} {path}: {status} {ctype} {data[:200]!r}")
    status, _, _ = srv.request("GET", "/health")
    check(status == 200, "the server is alive after the fuzz run")
    for _ in range(2):  # the same run again: memory must not grow with the number of requests
        for name, raw, method, path, body in cases:
            if raw is None and name != "huge body":
                try:
                    srv.request(method, path, body, timeout=30)
                except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                    pass
    rss_end = srv.rss_kib()
    print(f"fuzz: {len(cases)} cases, then 2 more passes; RSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end")
    if not sanitized:
        check(rss_end - rss_warm < 16 * 1024, f"RSS grew by {rss_end - rss_warm} KiB after warm-up")


def metric(srv, name):
    _, _, data = srv.request("GET", "/metrics")
    return int(re.search(rf"^{name} (\d+)$", data.decode(), re.M).group(1))


def test_bench(tessera, srv):
    before = metric(srv, "tessera_generation_tokens_total")
    r = subprocess.run([tessera, "bench", "serve", "--url", f"http://{srv.host}:{srv.port}", "--streams", "1,4",
                        "--requests", "6", "--max-tokens", "5", "--prompt-tokens", "9", "--json"],
                       capture_output=True, timeout=120)
    check(r.returncode == 0, f"bench serve exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    levels = [json.loads(line) for line in r.stdout.decode().splitlines()]
    check([lv["streams"] for lv in levels] == [1, 4] and all(lv["requests"] == 6 and lv["errors"] == 0 for lv in levels),
          f"bench serve levels: {levels}")
    generated = sum(lv["generated_tokens"] for lv in levels)
    delivered = metric(srv, "tessera_generation_tokens_total") - before
    check(0 < generated <= 2 * 6 * 5 and generated == delivered,
          f"bench serve counted {generated} generated tokens, the server's metrics {delivered}")
    check(all(0 < lv["ttft_ms_median"] <= lv["ttft_ms_p99"] and lv["itl_ms_median"] <= lv["itl_ms_p99"]
              and lv["tokens_per_s"] > 0 for lv in levels), f"bench serve figures: {levels}")


def test_sigterm(srv):
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        code = "timeout"
    check(code == 0, f"SIGTERM: exit {code}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: test_serve_e2e.py PATH/TO/tessera")
    tessera = os.path.abspath(sys.argv[1])
    sanitized = "sanitizers: none" not in run(tessera, "version").stdout.decode()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ts_serve_e2e_") as root:
        model = make_model(tessera, root)
        srv = Server(tessera, model)
        try:
            for name, fn in (("basics", lambda: test_basics(srv)), ("completions", lambda: test_completions(srv)),
                             ("chat completions", lambda: test_chat_completions(srv)),
                             ("logprobs and logit_bias", lambda: test_logprobs(srv)),
                             ("n choices", lambda: test_choices(srv)),
                             ("32 concurrent streams", lambda: test_concurrent(srv)),
                             ("tessera chat", lambda: test_chat_cli(tessera, model, srv)),
                             ("fuzz", lambda: test_fuzz(srv, sanitized)), ("bench serve", lambda: test_bench(tessera, srv)),
                             ("SIGTERM", lambda: test_sigterm(srv))):
                t = time.time()
                fn()
                print(f"{name}: {time.time() - t:.1f} s", flush=True)
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()
        if failures:
            print("server stderr (last lines):", *[l.decode(errors="replace") for l in srv.stderr_lines[-20:]],
                  sep="\n", file=sys.stderr)
    print(f"test_serve_e2e: {len(failures)} failures in {time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

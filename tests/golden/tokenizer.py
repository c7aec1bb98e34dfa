#!/usr/bin/env python3
"""Build the CLIP tokenizer files and record transformers' ids for lorahost's test.

Run: ~/ref/bin/python tests/golden/tokenizer.py
Writes tests/fixtures/tokenizer/:
  vocab.json, merges.txt  the real CLIP vocabulary, built from open_clip's
      bpe_simple_vocab_16e6.txt.gz by the original CLIP recipe (merges =
      lines[1:49152-256-2+1]; vocab = bytes_to_unicode chars, the same + "</w>",
      one token per merge, <|startoftext|>, <|endoftext|>: 49408 ids).
  cases.jsonl  line 1: {"meta": versions, hashes, tokenizer configs};
      then one case a line: {"text", "ids"} and where they apply
      "ids_sd2", "ids_sd15" (ids under the other configs, when they differ),
      "window_sd1", "window_sd2" (CLIPTokenizer(padding="max_length",
      max_length=77, truncation=True)), "a1111_20", "a1111_0" (AUTOMATIC1111's
      77-token chunks with comma_padding_backtrack 20 and 0), "decoded".
Reference: transformers 5 CLIPTokenizer, which runs on HuggingFace tokenizers
(the slow Python class is gone in v5; ftfy is not used). Three configs:
  sd1   CLIPTokenizer.from_pretrained(dir with vocab.json + merges.txt):
        pads with <|endoftext|>, as SD 1.x;
  sd2   the same with pad_token="!" (SD 2.x / OpenCLIP): "!" becomes a special
        token, pads with id 0;
  sd15  the same plus a tokenizer_config.json shaped like SD 1.5's (special
        tokens marked normalized=true; written here from memory of that file).
"""
import gzip
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile

import open_clip
import tokenizers
import transformers
from transformers import CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "..", "fixtures", "tokenizer"))
N_RANDOM = 400


# ---- vocabulary ----

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab():
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    os.makedirs(FIX, exist_ok=True)
    with open(os.path.join(FIX, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(FIX, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


SD15_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False,
                  "normalized": True, "rstrip": False, "single_word": False},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False,
                  "normalized": True, "rstrip": False, "single_word": False},
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False,
                  "normalized": True, "rstrip": False, "single_word": False},
}


def specials(tok):
    return sorted([[t.content, int(bool(t.normalized))] for t in tok.added_tokens_decoder.values()
                   if t.special])


# ---- corpus ----

LONG = [
    "masterpiece, best quality, ultra detailed, 8k, photorealistic, a beautiful young woman standing "
    "in a field of sunflowers at golden hour, wearing a white summer dress and a straw hat, soft warm "
    "lighting, bokeh background, shallow depth of field, cinematic composition, film grain, kodak "
    "portra 400, highly detailed skin texture, natural makeup, gentle smile, wind blowing through her "
    "long brown hair, butterflies flying around, distant mountains, clear blue sky with a few fluffy "
    "clouds, award winning photograph, trending on artstation",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, "
    "blurry, artist name, deformed, disfigured, mutated hands, poorly drawn hands, poorly drawn face, "
    "mutation, extra limbs, ugly, gross proportions, malformed limbs, missing arms, missing legs, "
    "extra arms, extra legs, fused fingers, too many fingers, long neck, duplicate, morbid, "
    "mutilated, out of frame, bad proportions, cloned face",
    "a breathtaking panoramic view of an ancient elven city built into giant trees with glowing "
    "lanterns hanging from every branch and rope bridges connecting the towers while a silver river "
    "winds below under a sky full of stars and two moons rising over snow capped mountains in the "
    "far distance painted in the style of a romantic landscape with rich colors dramatic light and "
    "tiny figures of travellers walking along the winding path toward the great gate of the city",
    ("(masterpiece:1.2), (best quality:1.1), " * 12).strip(),
    ", ".join(f"tag{i}" for i in range(60)),
    ", ".join(["a red apple on a wooden table"] * 12),
    " ".join(["word"] * 74) + ", tail",
    " ".join(["word"] * 75),
    " ".join(["word"] * 76),
    " ".join(["word"] * 73) + " , after the comma",
    " ".join(["word"] * 74) + " ,",
    " ".join(["word"] * 54) + ", " + " ".join(["next"] * 40),
    " ".join(["word"] * 55) + ", " + " ".join(["next"] * 40),
    " ".join(["word"] * 53) + ", " + " ".join(["next"] * 40),
    "," * 200,
    "cat " * 230,
    "1girl, solo, " * 40,
]

CURATED = [
    # typical prompts
    "a photo of an astronaut riding a horse on mars",
    "a photo of a cat",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, blue eyes, outdoors, cherry blossoms",
    "(masterpiece:1.2), (best quality:1.1), ultra-detailed, 8k wallpaper",
    "portrait of a cyberpunk samurai, neon lights, rain, highly detailed, digital painting, artstation, concept art, smooth, sharp focus, illustration, art by greg rutkowski and alphonse mucha",
    "a watercolor painting of a fox in a snowy forest",
    "studio ghibli style, a small house on a hill, summer, clouds",
    "RAW photo, DSLR, soft lighting, high quality, film grain, Fujifilm XT3",
    "photo, 35mm, f/1.8, ISO 400, 1/250s",
    "A Beautiful Sunset Over The Ocean",
    "UPPERCASE PROMPT WITH SHOUTING",
    "oil painting by Claude Monet, water lilies",
    "isometric pixel art of a tiny island, trending on artstation",
    "an armchair in the shape of an avocado",
    "hyperrealistic, octane render, unreal engine 5, volumetric lighting",
    "low poly, 3d render, blender, cycles",
    "a corgi wearing sunglasses, sticker, white background, vector art",
    "<lora:add_detail:0.8> a castle on a cliff",
    "embedding:EasyNegative, nsfw",
    "[dog:cat:0.5] in a [field|forest]",
    "((red hair)), [[blue eyes]], {freckles}",
    "(a:1.2) (b:0.9) [c] {d}",
    "\\(escaped parens\\) and \\[brackets\\]",
    "a cat BREAK a dog",
    "score_9, score_8_up, score_7_up, source_anime",
    "1girl, (solo:1.3), standing, full body, white background",
    "(((((very emphasized)))))",
    "(masterpiece:1.2)",
    "(word:0.8)",
    "[de-emphasized]",
    # numbers
    "1girl 4k 8K 1024x768",
    "3.14159 2.71828",
    "1,000,000 and 1.000.000",
    "2023-12-31 12:30pm",
    "v1.5 sd_xl_base_1.0 x2 x4",
    "½ ¾ ² ³ ⅞",
    "①②③ ⑩",
    "٣٤٥ ۱۲۳",
    "१२३ ৪৫৬",
    "Ⅻ ⅻ ↂ",
    "𝟘𝟙𝟚 𝟏𝟐",
    "0x1F600 0b1010 1e-5",
    "100% 50/50 24/7",
    "512x512, 768x768, 1024x1024",
    # contractions
    "don't it's I'm we'll they've you're he'd",
    "DON'T STOP BELIEVIN'",
    "O'Neil's bar",
    "'s",
    "'stop 'them 'really",
    "rock'n'roll",
    "can’t won’t",
    "''s '''s",
    "''''",
    "it 's 'll 've 're 'd 'm 't",
    "I'M YOU'RE WE'VE THEY'LL",
    # emoji
    "🐱",
    "I ❤️ NY",
    "👩🏽‍💻 coding",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 flag",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "🇯🇵🇺🇸🇩🇪",
    "😀😃😄😁😆",
    "1️⃣ #️⃣",
    "⭐star🌟",
    "🧑‍🚀 astronaut emoji",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿 scotland",
    "❤\ufe0e text style",
    "\U0001F3FB lone skin tone",
    "a cat 🐱 on a mat 🧶, cute 😍",
    # accents
    "café naïve Ångström",
    "crème brûlée résumé",
    "São Paulo Zürich Kraków Dvořák",
    "cafe\u0301 decomposed",
    "A\u030Angstrom decomposed",
    "\u212Bngstrom angstrom sign",
    "\u2126 ohm sign and \u03A9 omega",
    "\u212A kelvin sign",
    "Ñandú jalapeño",
    "Œuvre æsthetic",
    "İstanbul ıspanak",
    "Ǆ ǅ ǆ digraphs",
    # German
    "Straße STRASSE Fußball",
    "ẞ capital sharp s",
    "Grüße aus München",
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
    # Greek
    "Καλημέρα κόσμε",
    "ΣΟΦΙΑ σοφία ΟΔΟΣ",
    "ἀρχή Ὀδυσσεύς ᾯ",
    "α\u0313\u0301 decomposed polytonic",
    # Cyrillic
    "Привет, мир!",
    "ЁЛКА ёлка",
    "Україна Ђорђе Қазақстан",
    "кот в сапогах, масляная живопись",
    # Chinese
    "一只可爱的猫",
    "山水画，水墨，高清",
    "繁體中文測試",
    "𠀀𠀁𪚥",
    "中国风 女孩 汉服 8k",
    # Japanese
    "桜の木の下で",
    "カタカナ ひらがな",
    "ｶﾀｶﾅ halfwidth",
    "アニメ風の女の子、青い目",
    "カ\u3099 decomposed ga",
    "ガギグゲゴ パピプペポ",
    # Korean
    "안녕하세요",
    "고양이 그림",
    "\u1100\u1161\u11a8 conjoining jamo",
    "\u1100\u1161 \u1112\u1173\u11af",
    "ㄱㄴㄷ compatibility jamo",
    "한국어 텍스트 테스트",
    # RTL
    "مرحبا بالعالم",
    "مَرْحَبًا",
    "שָׁלוֹם עולם",
    "سلام دنیا",
    "اردو میں لکھا",
    # mixed scripts
    "cat猫кошкаγάτα",
    "Tokyo東京2020",
    "αβγ123abc",
    "hello世界🌍",
    "Москва-Paris-東京",
    # other scripts
    "สวัสดีครับ",
    "नमस्ते दुनिया",
    "வணக்கம்",
    "გამარჯობა",
    "Բարեւ",
    "ሰላም",
    "བོད་ཡིག",
    "សួស្តី",
    "မင်္ဂလာပါ",
    "ආයුබෝවන්",
    "ꦲꦏ꧀ꦱꦫ",
    "ᐊᐃᑦ",
    # whitespace
    "  leading spaces",
    "trailing spaces   ",
    "a\tb",
    "a\nb\n\nc",
    "line one\r\nline two",
    "a\u00a0b nbsp",
    "a\u3000b ideographic space",
    "a\u2003b em space",
    "a\u200bb zero width space",
    "a\u0085b next line",
    "a\u2028b\u2029c",
    "\t\t\t",
    "     ",
    "\u000b\u000c",
    "a      b       c",
    "\n\n\n a cat \n\n\n",
    "a\u180eb mongolian vowel separator",
    "a\u200db zwj",
    "a\u2060b word joiner",
    # long words
    "a" * 300,
    "supercalifragilisticexpialidocious",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "abc" * 100,
    "1234567890" * 10,
    "!!!!" * 50,
    "ab" * 200,
    "é" * 150,
    "猫" * 100,
    "😀" * 60,
    "antidisestablishmentarianism",
    # empty and punctuation only
    "",
    "!!!",
    "...",
    "?!",
    ",,,,",
    "()[]{}",
    "@#$%^&*",
    "—–-",
    "«»„“”",
    "¿¡",
    "…",
    "·•",
    "\\",
    "/",
    "~`",
    "'",
    "\"",
    "-_-",
    ":) ;-) <3",
    "</w>",
    "<|",
    "|>",
    "!",
    "a!",
    "wow!!! amazing!",
    "hello! world!",
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    # special tokens inline
    "<|startoftext|>",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "<|startoftext|>a cat<|endoftext|>",
    "<|STARTOFTEXT|>",
    "<|EndOfText|> shout",
    "<|endoftext|",
    "<<|endoftext|>>",
    "<|endoftext|><|endoftext|>",
    "x <|endoftext|>'s",
    " <|endoftext|> ",
    "<|startoftext|>\u0301",
    "cafe<|endoftext|>\u0301",
    # misc
    "https://example.com/path?x=1&y=2#frag",
    "user@example.com",
    "#sd #ai #art",
    "x = f(y) + 1;",
    "C++ C# F#",
    "&amp; &lt;3 &#39;",
    "ﬁ ﬂ ﬀ ligatures",
    "ＡＢＣ１２３ fullwidth",
    "∑∫√∞≠≤",
    "€100 $5 ¥300 £2",
    "™®©",
    "\u0001\u0002 control",
    "\u007f delete",
    "\ufeffbom",
    "ΑΣ ΟΔΟΣ final sigma",
    "\u0300 leading combining mark",
    "e\u0301\u0323 reorder",
    "a\u0323\u0301 ordered",
    "o\u031b\u0323\u0301 horn",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333",
    "o" + "\u0301\u0323\u0334\u0345\u031b\u0300\u0316\u0327" * 6 + " 48 marks in one run",
    "Ⓐⓑⓒ circled",
    "𝐀𝐁𝐂 𝒶𝒷𝒸 math",
    "\ue000\uf8ff private use",
    "\U000E0041 tag",
    "\u1c89\u1c8a new cyrillic",
    "\U00016EA0\U00016EBB new script",
    "\uA7CB\uA7DC new latin",
    "\U00010D50 garay",
    "\u0378 unassigned",
    "\U0010FFFF max",
    "\uFFFD replacement char",
    "\u0130\u0307 dotted",
    "ﷺ arabic ligature",
    "㍿ square",
    "\u0F73 tibetan",
    "\u0344 greek dialytika tonos",
    "\u0958 devanagari qa",
    "\U0001D15E musical",
    "\U00011938 dives akuru",
    "a\u0345\u0334 iota",
]


def random_cases(n):
    rng = random.Random(20240611)
    pools = [
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4,
        list("0123456789") * 2,
        list(" \t\n\r\x0b\x0c") + ["\u0085", "\u00a0", "\u2003", "\u3000", "\u2028", "\u200b"],
        list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") * 2,
        ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "<|endoftext|>",
         "<|startoftext|>", "<|ENDOFTEXT|>", "</w>", "!"],
        [chr(c) for c in range(0x300, 0x370)] + ["\u0591", "\u05b0", "\u0e31", "\u093c", "\u1dc0",
                                                  "\u20d0", "\u302a", "\u3099", "\ufe20"],
        [chr(c) for c in range(0xc0, 0x250)],
        [chr(c) for c in range(0x370, 0x3ff)] + [chr(c) for c in range(0x400, 0x4ff)],
        [chr(c) for c in range(0x1100, 0x1200)] + [chr(0xac00 + rng.randrange(11172)) for _ in range(50)],
        [chr(c) for c in range(0x4e00, 0x4e80)] + [chr(c) for c in range(0x3040, 0x3100)],
        [chr(c) for c in range(0x1e00, 0x1f00)] + [chr(c) for c in range(0x1f00, 0x2000)],
        ["\U0001F600", "\U0001F469", "\u200d", "\U0001F3FD", "\ufe0f", "\U0001F1EF", "\U0001F1F5",
         "\u2764", "\U0001F44D"],
        [chr(c) for c in range(0x2000, 0x2070)] + [chr(c) for c in range(0xff00, 0xff70)],
        ["\u0130", "\u212a", "\u2126", "\u212b", "\u1e9e", "\u00df", "\u03a3", "\u01c5", "\ufb01",
         "\u0149", "\u1f88", "\u0390"],
    ]
    # code points from everywhere (valid, not surrogates or NUL)
    anywhere = [c for c in (rng.randrange(1, 0x110000) for _ in range(5000))
                if not 0xd800 <= c <= 0xdfff]
    pools.append([chr(c) for c in anywhere])
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        weights = [rng.random() for _ in pools]
        s = "".join(rng.choice(rng.choices(pools, weights)[0]) for _ in range(k))
        out.append(s)
    return out


# ---- reference: AUTOMATIC1111 modules/sd_hijack_clip.py tokenize_line ----

def a1111_chunks(tokens, comma, bos, eos, backtrack, chunk_length=75):
    """FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line without emphasis
    parsing or textual-inversion embeddings; SD 1.x (id_pad == id_end)."""
    chunks, chunk, last_comma = [], [], -1

    def next_chunk():
        nonlocal chunk, last_comma
        to_add = chunk_length - len(chunk)
        if to_add > 0:
            chunk = chunk + [eos] * to_add
        chunks.append([bos] + chunk + [eos])
        last_comma = -1
        chunk = []

    for token in tokens:
        if token == comma:
            last_comma = len(chunk)
        elif backtrack != 0 and len(chunk) == chunk_length and last_comma != -1 and \
                len(chunk) - last_comma <= backtrack:
            break_location = last_comma + 1
            reloc = chunk[break_location:]
            chunk = chunk[:break_location]
            next_chunk()
            chunk = reloc
        if len(chunk) == chunk_length:
            next_chunk()
        chunk.append(token)
    if chunk or not chunks:
        next_chunk()
    return chunks


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    build_vocab()
    tok = {"sd1": CLIPTokenizer.from_pretrained(FIX),
           "sd2": CLIPTokenizer.from_pretrained(FIX, pad_token="!")}
    with tempfile.TemporaryDirectory() as d:
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(FIX, f), d)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(SD15_CONFIG, f)
        tok["sd15"] = CLIPTokenizer.from_pretrained(d)
    assert tok["sd2"].pad_token_id == 0 and tok["sd1"].pad_token_id == 49407
    comma = tok["sd1"].convert_tokens_to_ids(",</w>")
    bos, eos = tok["sd1"].bos_token_id, tok["sd1"].eos_token_id
    meta = {
        "generator": "tests/golden/tokenizer.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "open_clip": open_clip.__version__,
        "python": sys.version.split()[0],
        "vocab_sha256": sha256(os.path.join(FIX, "vocab.json")),
        "merges_sha256": sha256(os.path.join(FIX, "merges.txt")),
        "configs": {k: {"specials": specials(t), "pad_id": t.pad_token_id} for k, t in tok.items()},
        "bos_id": bos, "eos_id": eos, "comma_id": comma,
    }
    curated = LONG + CURATED
    assert len(curated) == len(set(curated))
    cases = [(s, True) for s in curated] + [(s, False) for s in random_cases(N_RANDOM)]
    lines = [json.dumps({"meta": meta}, ensure_ascii=True)]
    n_long = 0
    for text, full in cases:
        rec = {"text": text}
        ids = {k: t(text, add_special_tokens=False)["input_ids"] for k, t in tok.items()}
        rec["ids"] = ids["sd1"]
        for k in ("sd2", "sd15"):
            if ids[k] != ids["sd1"]:
                rec["ids_" + k] = ids[k]
        if full:
            for k in ("sd1", "sd2"):
                w = tok[k](text, padding="max_length", max_length=77, truncation=True)["input_ids"]
                assert len(w) == 77
                rec["window_" + k] = w
            rec["decoded"] = tok["sd1"].decode(ids["sd1"])
        if full and len(ids["sd1"]) >= 70:
            n_long += len(ids["sd1"]) > 75
            rec["a1111_20"] = a1111_chunks(ids["sd1"], comma, bos, eos, 20)
            rec["a1111_0"] = a1111_chunks(ids["sd1"], comma, bos, eos, 0)
        lines.append(json.dumps(rec, ensure_ascii=True))
    with open(os.path.join(FIX, "cases.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {FIX}: {len(curated)} curated + {N_RANDOM} random cases ({n_long} over 75 ids); "
          f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
          f"open_clip {open_clip.__version__}; specials {meta['configs']}")


if __name__ == "__main__":
    main()

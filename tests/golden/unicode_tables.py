#!/usr/bin/env python3
"""Generate host/unicode_tables.c: the Unicode data the CLIP tokenizer needs.

Run: ~/ref/bin/python tests/golden/unicode_tables.py
transformers 5 has no slow (pure Python) CLIPTokenizer any more: CLIPTokenizer
runs on HuggingFace `tokenizers` (Rust), whose pipeline uses three different
Unicode versions. Every table is therefore read off that library itself rather
than off Python's unicodedata or the `regex` module:
  - classes \\p{L}, \\p{N}, \\s: the Oniguruma regex engine the Split and
    ByteLevel pre-tokenizers and the Replace normalizer use,
  - lowercase: Rust's char::to_lowercase (the Lowercase normalizer),
  - NFC: the unicode-normalization-alignments crate (the NFC normalizer).
Decomposition, combining-class and composition data come from unicodedata,
restricted to what the crate knows, then the whole NFC is checked against
tokenizers on every code point and on random mark/jamo strings.
"""
import os
import random
import sys
import unicodedata

import tokenizers
from tokenizers import Regex, normalizers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "..", "host", "unicode_tables.c"))
CPS = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
HANGUL_S, HANGUL_N = 0xAC00, 11172
CLASS_L, CLASS_N, CLASS_S = 1, 2, 3


def probe_class(pattern):
    """Code points the tokenizers regex engine matches with a one-char pattern."""
    s = "".join(chr(c) for c in CPS)
    a = normalizers.Replace(Regex(pattern), "A").normalize_str(s)
    b = normalizers.Replace(Regex(pattern), "B").normalize_str(s)
    assert len(a) == len(b) == len(s)
    return {CPS[i] for i in range(len(s)) if a[i] == "A" and b[i] == "B"}


def ranges(sorted_cps):
    out = []
    for c in sorted_cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def class_table():
    sets = {CLASS_L: probe_class(r"[\p{L}]"), CLASS_N: probe_class(r"[\p{N}]"),
            CLASS_S: probe_class(r"[\s]")}
    assert not (sets[CLASS_L] & sets[CLASS_N]) and not (sets[CLASS_S] & (sets[CLASS_L] | sets[CLASS_N]))
    rows = []
    for k, s in sets.items():
        rows += [(a, b, k) for a, b in ranges(sorted(s))]
    rows.sort()
    return rows, {k: len(v) for k, v in sets.items()}


def lower_table():
    f = normalizers.Lowercase()
    single, multi = {}, {}
    for c in CPS:
        o = f.normalize_str(chr(c))
        if o == chr(c):
            continue
        if len(o) == 1:
            single[c] = ord(o)
        else:
            assert len(o) <= 3, hex(c)
            multi[c] = [ord(x) for x in o]
    # runs (start, end, stride, delta): c in [start, end], (c - start) % stride == 0
    rows, keys = [], sorted(single)

    def run_end(i, stride):
        d = single[keys[i]] - keys[i]
        while i + 1 < len(keys) and keys[i + 1] == keys[i] + stride and single[keys[i + 1]] - keys[i + 1] == d:
            i += 1
        return i

    i = 0
    while i < len(keys):
        j1, j2 = run_end(i, 1), run_end(i, 2)
        j, stride = (j2, 2) if j2 > j1 else (j1, 1)
        rows.append((keys[i], keys[j], stride, single[keys[i]] - keys[i]))
        i = j + 1
    # check the runs reproduce the map exactly
    got = {}
    for a, e, stride, d in rows:
        for c in range(a, e + 1, stride):
            got[c] = c + d
    assert got == single
    return rows, multi


def nfc_tables():
    """Decomposition, ccc and composition data as the crate sees it."""
    nfd, nfc = normalizers.NFD(), normalizers.NFC()
    decomp = {}
    for c in CPS:
        if HANGUL_S <= c < HANGUL_S + HANGUL_N:
            continue
        d = nfd.normalize_str(chr(c))
        if d != chr(c):
            assert d == unicodedata.normalize("NFD", chr(c)), hex(c)
            decomp[c] = [ord(x) for x in d]
    # combining classes: unicodedata's value if the crate knows the character
    # (it reorders it against a reference mark), else 0
    ccc = {}
    ref_low, ref_high = "\u0334", "\u0345"  # ccc 1 and ccc 240
    for c in CPS:
        v = unicodedata.combining(chr(c))
        if not v:
            continue
        if v > 1:
            known = nfd.normalize_str(chr(c) + ref_low) == ref_low + chr(c)
        else:
            known = nfd.normalize_str(ref_high + chr(c)) == chr(c) + ref_high
        if known:
            ccc[c] = v
    # primary composites: two-character canonical decomposition that NFC keeps
    comp = []
    for c in decomp:
        m = unicodedata.decomposition(chr(c))
        if not m or m.startswith("<"):
            continue
        parts = [int(x, 16) for x in m.split()]
        if len(parts) == 2 and nfc.normalize_str(chr(c)) == chr(c):
            comp.append((parts[0], parts[1], c))
    comp.sort()
    return decomp, ccc, comp


# ---- a Python model of the C code, checked against tokenizers ----

def model_nfc(s, decomp, ccc, compmap):
    out = []
    for ch in s:
        c = ord(ch)
        if HANGUL_S <= c < HANGUL_S + HANGUL_N:
            i = c - HANGUL_S
            out += [0x1100 + i // 588, 0x1161 + (i % 588) // 28] + ([0x11A7 + i % 28] if i % 28 else [])
        else:
            out += decomp.get(c, [c])
    i = 0
    while i < len(out):  # canonical ordering: stable sort of each run of marks
        if ccc.get(out[i], 0) == 0:
            i += 1
            continue
        j = i
        while j < len(out) and ccc.get(out[j], 0):
            j += 1
        out[i:j] = sorted(out[i:j], key=lambda x: ccc[x])
        i = j
    if not out:
        return ""
    res = [out[0]]
    starter = 0 if ccc.get(out[0], 0) == 0 else -1
    last = 0 if starter == 0 else 256
    for c in out[1:]:
        cc = ccc.get(c, 0)
        comp = None
        if starter >= 0 and (last < cc or last == 0):
            a = res[starter]
            if 0x1100 <= a < 0x1113 and 0x1161 <= c < 0x1176:
                comp = HANGUL_S + ((a - 0x1100) * 21 + (c - 0x1161)) * 28
            elif HANGUL_S <= a < HANGUL_S + HANGUL_N and (a - HANGUL_S) % 28 == 0 and 0x11A7 < c < 0x11C3:
                comp = a + (c - 0x11A7)
            else:
                comp = compmap.get((a, c))
        if comp is not None:
            res[starter] = comp
            continue
        if cc == 0:
            starter = len(res)
        last = cc
        res.append(c)
    return "".join(chr(c) for c in res)


def check_nfc(decomp, ccc, comp):
    nfc = normalizers.NFC()
    compmap = {(a, b): c for a, b, c in comp}
    for c in CPS:  # every single code point
        s = chr(c)
        assert model_nfc(s, decomp, ccc, compmap) == nfc.normalize_str(s), hex(c)
    rng = random.Random(1234)
    # marks the crate knows and ones it treats as starters (newer than its tables)
    marks = sorted(set(ccc) | {c for c in CPS if unicodedata.combining(chr(c))})
    starters = sorted({a for a, _, _ in comp} | {b for _, b, _ in comp} | set(decomp))
    jamo = list(range(0x1100, 0x1113)) + list(range(0x1161, 0x1176)) + list(range(0x11A7, 0x11C3))
    jamo += [HANGUL_S, HANGUL_S + 28, HANGUL_S + 27, 0xD7A3]
    pool = marks + starters + jamo + [ord(x) for x in "aeiouAEIOU "]
    for a, b, c in comp:  # every pair, and pairs with a mark in between
        for s in (chr(a) + chr(b), chr(a) + "\u0316" + chr(b), chr(a) + "\u0301" + chr(b)):
            assert model_nfc(s, decomp, ccc, compmap) == nfc.normalize_str(s), [hex(ord(x)) for x in s]
    for _ in range(200000):
        s = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 8)))
        assert model_nfc(s, decomp, ccc, compmap) == nfc.normalize_str(s), [hex(ord(x)) for x in s]


# ---- output ----

def rows_c(rows, fmt, per_line):
    items = [fmt % tuple(r) for r in rows]
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + " ".join(items[i:i + per_line]))
    return "\n".join(lines)


def main():
    classes, counts = class_table()
    lower, multi = lower_table()
    decomp, ccc, comp = nfc_tables()
    check_nfc(decomp, ccc, comp)
    ccc_rows = []
    for c in sorted(ccc):
        if ccc_rows and ccc_rows[-1][1] == c - 1 and ccc_rows[-1][2] == ccc[c]:
            ccc_rows[-1][1] = c
        else:
            ccc_rows.append([c, c, ccc[c]])
    ddata, drows = [], []
    for c in sorted(decomp):
        drows.append((c, len(ddata), len(decomp[c])))
        ddata += decomp[c]
    assert len(ddata) < 65536
    multi_rows = [(c, *(v + [0] * (3 - len(v)))) for c, v in sorted(multi.items())]
    # below this code point every character is NFC_Quick_Check=Yes: NFC keeps
    # it, it has no combining class and is never the second half of a composite
    nfc = normalizers.NFC()
    quick = min([c for c in decomp if nfc.normalize_str(chr(c)) != chr(c)] + list(ccc) +
                [b for _, b, _ in comp])
    version_note = (f"tokenizers {tokenizers.__version__}, Python {sys.version.split()[0]} "
                    f"(unicodedata {unicodedata.unidata_version})")
    src = f"""/* Unicode data for the CLIP tokenizer (host/tokenizer.c): letter/number/space
 * classes, lowercase and NFC, as HuggingFace tokenizers applies them.
 * GENERATED by tests/golden/unicode_tables.py from {version_note}; do not edit. */
#include "tokenizer.h"

/* Oniguruma's [\\p{{L}}] ({counts[CLASS_L]} code points), [\\p{{N}}] ({counts[CLASS_N]}), [\\s] ({counts[CLASS_S]}):
 * sorted, disjoint {{first, last, class}} ranges. */
const lh__uni_range lh__uni_classes[] = {{
{rows_c(classes, "{0x%X, 0x%X, %d},", 4)}
}};
const size_t lh__uni_classes_n = {len(classes)};

/* Rust char::to_lowercase, one-to-one part: c in [first, last] with
 * (c - first) % stride == 0 maps to c + delta. */
const lh__uni_lower_run lh__uni_lower[] = {{
{rows_c(lower, "{0x%X, 0x%X, %d, %d},", 4)}
}};
const size_t lh__uni_lower_n = {len(lower)};
/* Its one-to-many part: {{code point, up to 3 code points, 0-padded}}. */
const lh__uni_lower_multi lh__uni_lower_multi_tab[] = {{
{rows_c(multi_rows, "{0x%X, {0x%X, 0x%X, 0x%X}},", 2)}
}};
const size_t lh__uni_lower_multi_n = {len(multi_rows)};

/* Text made only of code points below this is already NFC. */
const uint32_t lh__uni_nfc_quick_below = 0x{quick:X};

/* Canonical combining class != 0, as {{first, last, ccc}} ranges. */
const lh__uni_range lh__uni_ccc[] = {{
{rows_c(ccc_rows, "{0x%X, 0x%X, %d},", 4)}
}};
const size_t lh__uni_ccc_n = {len(ccc_rows)};

/* Full canonical decompositions (Hangul syllables are computed):
 * {{code point, offset into lh__uni_decomp_data, length}}. */
const lh__uni_decomp_entry lh__uni_decomp[] = {{
{rows_c(drows, "{0x%X, %d, %d},", 4)}
}};
const size_t lh__uni_decomp_n = {len(drows)};
const uint32_t lh__uni_decomp_data[] = {{
{rows_c([(x,) for x in ddata], "0x%X,", 8)}
}};

/* Primary composites, sorted by {{first, second}}. */
const lh__uni_comp_entry lh__uni_comp[] = {{
{rows_c(comp, "{0x%X, 0x%X, 0x%X},", 3)}
}};
const size_t lh__uni_comp_n = {len(comp)};
"""
    with open(OUT, "w") as f:
        f.write(src)
    print(f"wrote {OUT}: {len(classes)} class ranges, {len(lower)} lowercase runs, "
          f"{len(ccc_rows)} ccc ranges, {len(drows)} decompositions, {len(comp)} composites; "
          f"{version_note}")


if __name__ == "__main__":
    main()

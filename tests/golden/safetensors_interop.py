"""safetensors interop fixtures, both directions, checked in CI without Python.

Run with the reference venv from the repository root:
  ~/ref/bin/python tests/golden/safetensors_interop.py --write   # regenerate
  ~/ref/bin/python tests/golden/safetensors_interop.py           # check only

--write makes, in tests/fixtures/safetensors/:
  interop_py.safetensors  every dtype lorahost knows, odd shapes, a 0-D scalar,
                          an empty tensor, a non-ASCII name and one non-ASCII
                          metadata entry (one entry only: the Rust writer puts
                          metadata keys in hash order, so more would not give
                          reproducible bytes). tests/test_safetensors.c reads
                          it and writes the same tensors, byte-identical.
  meta_py.safetensors     several metadata entries (kohya-style keys, empty and
                          non-ASCII strings) and one tensor, for reading.
  VERSIONS                the safetensors, numpy and Python versions used.
Then, and in check mode, it verifies with Python safetensors:
  - interop_py.safetensors is still what this safetensors version writes;
  - meta_py.safetensors reads back as written;
  - written_by_lorahost.safetensors (made by lorahost's writer: run
    `LH_REGEN_FIXTURES=1 ctest -R safetensors` after changing the table below)
    holds exactly the expected tensors and metadata.
The tensor table below is duplicated in tests/test_safetensors.c (INTEROP);
keep the two identical.
"""
import ctypes
import json
import os
import platform
import struct
import sys

import numpy as np
import safetensors
from safetensors import TensorSpec, deserialize, safe_open, serialize

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "safetensors")

# name, dtype, shape, scale, offset: element i is i * scale + offset (computed
# in float64 for float types, int64 for the others); unsigned integers and the
# float8 types (given as raw bytes) wrap modulo 2^bits; BOOL is i % 3 == 0.
INTEROP = [
    ("f32.mat", "F32", [3, 5], 0.25, -3.0),
    ("f16.vec", "F16", [7], 0.5, -1.5),
    ("bf16.cube", "BF16", [2, 3, 2], 0.125, -0.75),
    ("f64.row", "F64", [1, 3], 0.1, -1.0),
    ("i64.scalar", "I64", [], 0, -1234567890123),
    ("i32.col", "I32", [4, 1], -7, 3),
    ("i16.v", "I16", [3], 1000, -1500),
    ("i8.v", "I8", [5], -50, 100),
    ("u64.v", "U64", [2], 4294967296, 7),
    ("u32.v", "U32", [2], 3000000000, 1),
    ("u16.v", "U16", [3], 30000, 5),
    ("u8.img", "U8", [2, 2, 3], 37, 5),
    ("bool.mask", "BOOL", [5], 0, 0),
    ("f8e4m3.v", "F8_E4M3", [4], 3, 0x38),
    ("f8e5m2.v", "F8_E5M2", [4], 5, 0x3C),
    ("empty", "F32", [0, 4], 1.0, 0.0),
    ('unicode \u00fc "q"/\\ \u2713', "F16", [1], 0.0, 0.5),
]
INTEROP_META = {
    "\u63cf\u8ff0 \u2713": "h\u00e9llo w\u00f6rld \U0001F600\n\t\"q\" \\ / \x01 \x1f \x7f \b \f \r end"
}
# What lorahost writes into written_by_lorahost.safetensors (same tensors).
LORAHOST_META = {
    "format": "pt",
    "lorahost": "written by tests/test_safetensors.c",
    "\u00fc-key": "\u00ff-value \u2713\nline two",
    "": "empty key",
}
META_PY = {
    "ss_network_dim": "8",
    "ss_network_alpha": "4.0",
    "empty": "",
    "json": '{"a": [1, 2], "b": "\u00e9"}',
    "\u043a\u043b\u044e\u0447": "\u0437\u043d\u0430\u0447\u0435\u043d\u0438\u0435",
    "format": "pt",
}

NP = {
    "F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
    "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
}
SPEC = {
    "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
    "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def tensor_bytes(dtype, shape, scale, offset):
    """Little-endian bytes of one table row."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    i = np.arange(n, dtype=np.int64)
    if dtype == "BOOL":
        return (i % 3 == 0).astype(np.uint8).tobytes()
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return ((i * int(scale) + int(offset)) % 256).astype(np.uint8).tobytes()
    if dtype in ("F32", "F16", "F64", "BF16"):
        v = i.astype(np.float64) * scale + offset
        if dtype == "BF16":  # the table's values are exact in bfloat16
            bits = v.astype(np.float32).view(np.uint32)
            assert np.all(bits & 0xFFFF == 0)
            return (bits >> 16).astype("<u2").tobytes()
        return v.astype(np.dtype(NP[dtype]).newbyteorder("<")).tobytes()
    v = i * int(scale) + int(offset)  # astype wraps unsigned types modulo 2^bits
    return v.astype(np.dtype(NP[dtype]).newbyteorder("<")).tobytes()


def python_serialize(rows, metadata):
    """Serialize with safetensors' own writer (what save_file calls)."""
    keep, specs = [], {}
    for name, dtype, shape, scale, offset in rows:
        raw = tensor_bytes(dtype, shape, scale, offset)
        buf = ctypes.create_string_buffer(raw, max(len(raw), 1))
        keep.append(buf)
        specs[name] = TensorSpec(dtype=SPEC[dtype], shape=shape,
                                 data_ptr=ctypes.addressof(buf), data_len=len(raw))
    return bytes(serialize(specs, metadata=metadata))


def header(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    return n, json.loads(blob[8:8 + n])


def check_contents(path, rows, metadata):
    """The file holds exactly these tensors (raw bytes) and metadata."""
    with open(path, "rb") as f:
        blob = f.read()
    got = {name: v for name, v in deserialize(blob)}
    assert set(got) == {r[0] for r in rows}, (path, sorted(got))
    for name, dtype, shape, scale, offset in rows:
        t = got[name]
        assert t["dtype"] == dtype, (path, name, t["dtype"])
        assert list(t["shape"]) == shape, (path, name, t["shape"])
        assert bytes(t["data"]) == tensor_bytes(dtype, shape, scale, offset), (path, name)
    with safe_open(path, framework="np") as f:
        assert (f.metadata() or {}) == metadata, (path, f.metadata())
    for name, dtype, shape, scale, offset in rows:  # numpy's own view, where numpy has the type
        if dtype in NP:
            with safe_open(path, framework="np") as f:
                arr = f.get_tensor(name)
            want = np.frombuffer(tensor_bytes(dtype, shape, scale, offset), dtype=NP[dtype])
            assert np.array_equal(arr.reshape(-1), want), (path, name)
    return blob


def main():
    write = "--write" in sys.argv[1:]
    py_path = os.path.join(FIXTURES, "interop_py.safetensors")
    meta_path = os.path.join(FIXTURES, "meta_py.safetensors")
    lh_path = os.path.join(FIXTURES, "written_by_lorahost.safetensors")
    meta_rows = [("lora_unet_x.lora_down.weight", "F16", [2, 2], 0.5, 0.25)]
    if write:
        os.makedirs(FIXTURES, exist_ok=True)
        with open(py_path, "wb") as f:
            f.write(python_serialize(INTEROP, INTEROP_META))
        with open(meta_path, "wb") as f:
            f.write(python_serialize(meta_rows, META_PY))
        with open(os.path.join(FIXTURES, "VERSIONS"), "w") as f:
            f.write(f"safetensors {safetensors.__version__}\nnumpy {np.__version__}\n"
                    f"python {platform.python_version()}\n")

    blob = check_contents(py_path, INTEROP, INTEROP_META)
    assert blob == python_serialize(INTEROP, INTEROP_META), "interop_py.safetensors is stale"
    check_contents(meta_path, meta_rows, META_PY)
    print("ok: interop_py.safetensors, meta_py.safetensors")

    if not os.path.exists(lh_path):
        print("skip: no written_by_lorahost.safetensors yet (LH_REGEN_FIXTURES=1 ctest -R safetensors)")
        return
    blob = check_contents(lh_path, INTEROP, LORAHOST_META)
    # Same layout as Python's writer: tensor order, offsets and data bytes.
    ref = python_serialize(INTEROP, None)
    n_lh, h_lh = header(blob)
    n_py, h_py = header(ref)
    assert list(h_lh)[0] == "__metadata__", "metadata must come first"
    assert [k for k in h_lh if k != "__metadata__"] == list(h_py), "tensor order differs"
    assert all(h_lh[k] == h_py[k] for k in h_py), "tensor entries differ"
    assert n_lh % 8 == 0 and blob[8 + n_lh:] == ref[8 + n_py:], "data section differs"
    print("ok: written_by_lorahost.safetensors")


if __name__ == "__main__":
    main()

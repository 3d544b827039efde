"""The memory a decompression-bomb image costs before it is refused, on each decode path here.

    python bench/bomb_memory.py

A small PNG and a small JPEG whose headers declare 100,000 x 100,000 and 65,000 x 65,000 pixels
(decoded as RGB: 30 GB and 12.7 GB), a PNG just over a lowered limit (--max-image-pixels), and a control: a real 4,000 x 3,000 PNG
under the limit, decoded, to show what a decode costs and that the measure sees it;
each decoded through the loading processes' path (Preprocess.decode: `--decode pil` and `cpu`; the
GPU path hands the same checked bytes to nvJPEG) in a fresh process. Prints the process's peak RSS
(VmHWM, reset just before: /proc/self/clear_refs) before and after the refusal against what a decode of the declared image would allocate.
"""

from __future__ import annotations

import json
import subprocess
import sys

import _util  # noqa: F401  (puts the checkout on sys.path)

CHILD = r"""
import io, json, struct, sys, zlib
from PIL import Image
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.image import decode
from w2s_pipe.pipeline.image.preprocess import Preprocess

kind, decoder = sys.argv[1], sys.argv[2]
def png(w, h):
    buf = io.BytesIO(); Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, format="PNG"); data = bytearray(buf.getvalue())
    i = data.index(b"IHDR"); data[i + 4:i + 12] = struct.pack(">II", w, h)
    data[i + 17:i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i:i + 17]))); return bytes(data), w * h
def jpeg(w, h):
    buf = io.BytesIO(); Image.new("RGB", (16, 16), (9, 9, 9)).save(buf, format="JPEG"); data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0"); data[i + 5:i + 9] = struct.pack(">HH", h, w); return bytes(data), w * h
def real(w, h):
    buf = io.BytesIO(); Image.new("RGB", (w, h), (9, 9, 9)).save(buf, format="PNG"); return buf.getvalue(), w * h
field, (data, pixels) = {"png": ("png", png(100_000, 100_000)), "jpeg": ("jpg", jpeg(65_000, 65_000)),
                         "over-limit": ("png", png(4_000, 3_000)), "control": ("png", real(4_000, 3_000))}[kind]
if kind == "over-limit":
    decode.limit_pixels(10_000_000)
prepare = Preprocess({"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875,
                      "mean": (0.5,) * 3, "std": (0.5,) * 3}, decoder)
def hwm():  # the peak RSS since the last reset, KiB
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # resets the peak to the current RSS (Linux 4.0+)
before = hwm()
try:
    prepare.decode({"__key__": "k", field: data}, (field,), "s.tar")
    refused = None
except W2SError as exc:
    refused = str(exc)
after = hwm()
print(json.dumps({"before_kib": before, "after_kib": after, "declared_pixels": pixels, "bytes": len(data),
                  "refused": refused}))
"""


def main():
    rows = []
    for kind in ("png", "jpeg", "over-limit", "control"):
        for decoder in ("pil", "cpu"):
            out = subprocess.run([sys.executable, "-c", CHILD, kind, decoder], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"image": kind, "decode": decoder, **row})
            grew = row["after_kib"] - row["before_kib"]
            print(f"{kind:>10} {decoder:>3}: {row['bytes']:,} bytes declaring {row['declared_pixels']:,} pixels "
                  f"(an RGB decode: {3 * row['declared_pixels'] / 2**20:,.0f} MiB); peak RSS {row['before_kib'] / 1024:.0f} "
                  f"-> {row['after_kib'] / 1024:.0f} MiB (+{grew} KiB); "
                  f"{'refused: ' + row['refused'][-90:] if row['refused'] else 'decoded'}")
    _util.save("bomb_memory", {"rows": rows})


if __name__ == "__main__":
    main()

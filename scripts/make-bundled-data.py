#!/usr/bin/env python3
"""Writes assets/data/fashion-mnist-subset/: the first N_TRAIN training and N_TEST test images of
Fashion-MNIST, as read from Debian's dataset-fashion-mnist package, in the original idx format.
Being a prefix, every image keeps its index in the full split as its id."""
import gzip
import os
import struct
import sys

SRC = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(os.path.dirname(__file__), "..", "assets", "data", "fashion-mnist-subset")
N_TRAIN, N_TEST = 1000, 200


def prefix(name, n):
    raw = gzip.open(os.path.join(SRC, name)).read()
    ndim = raw[3]
    dims = list(struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim]))
    per_item = 1
    for d in dims[1:]:
        per_item *= d
    dims[0] = n
    body = raw[4 + 4 * ndim : 4 + 4 * ndim + n * per_item]
    out = raw[:4] + struct.pack(">" + "I" * ndim, *dims) + body
    # mtime=0 keeps the output byte-identical from run to run.
    with gzip.GzipFile(os.path.join(OUT, name), "wb", compresslevel=9, mtime=0) as f:
        f.write(out)


if __name__ == "__main__":
    if not os.path.isdir(SRC):
        sys.exit(f"{SRC} is missing: apt-get install dataset-fashion-mnist")
    os.makedirs(OUT, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        prefix(f"{split}-images-idx3-ubyte.gz", n)
        prefix(f"{split}-labels-idx1-ubyte.gz", n)

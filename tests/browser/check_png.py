#!/usr/bin/env python3
"""Check a headless-Chromium screenshot of the admin page is not blank.

usage: check_png.py PNG_FILE
Decodes the PNG with the standard library (zlib + struct) and checks its size,
the number of distinct colours, that there is dark text, and that the chart's
blue (#3b7dd8) and orange (#e07b39) bars were painted.
"""
import os
import struct
import sys
import zlib


def fail(msg):
    print(f'screenshot check FAILED: {msg}', file=sys.stderr)
    sys.exit(1)


def decode(path):
    data = open(path, 'rb').read()
    if data[:8] != b'\x89PNG\r\n\x1a\n':
        fail(f'{path} is not a PNG')
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        length, ctype = struct.unpack('>I4s', data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if ctype == b'IHDR':
            ihdr = struct.unpack('>IIBBBBB', chunk)
        elif ctype == b'IDAT':
            idat.append(chunk)
        elif ctype == b'IEND':
            break
        pos += 12 + length
    w, h, depth, color, _, _, interlace = ihdr
    if depth != 8 or color not in (2, 6) or interlace:
        fail(f'unsupported PNG format: depth {depth}, colour type {color}, interlace {interlace}')
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b''.join(idat))
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pr) & 255
        elif f != 0:
            fail(f'bad PNG filter type {f} on row {y}')
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def near(px, ref, tol=12):
    return all(abs(a - b) <= tol for a, b in zip(px, ref))


def main():
    path = sys.argv[1]
    size = os.path.getsize(path)
    if size < 10_000:
        fail(f'{path} is only {size} bytes; expected > 10 KB for a rendered page')
    w, h, bpp, rows = decode(path)
    dark, blue, orange = 0, 0, 0
    hist = {}  # colour -> pixel count
    for line in rows:
        for x in range(0, len(line), bpp):
            px = line[x:x + 3]
            hist[px] = hist.get(px, 0) + 1
    for px, n in hist.items():
        if max(px) < 90:
            dark += n
        if near(px, (0x3b, 0x7d, 0xd8)):
            blue += n
        if near(px, (0xe0, 0x7b, 0x39)):
            orange += n
    print(f'screenshot {w}x{h}, {size} bytes, {len(hist)} distinct colours, '
          f'{dark} dark (text) pixels, {blue} blue and {orange} orange chart pixels')
    if len(hist) <= 10:
        fail(f'only {len(hist)} distinct colours: the page looks blank')
    if dark < 2000:
        fail(f'only {dark} dark pixels: no table text rendered')
    if blue < 50:
        fail('no blue p50 bars (#3b7dd8) in the chart')
    if orange < 20:
        fail('no orange own-share bars (#e07b39) in the chart')


if __name__ == '__main__':
    main()

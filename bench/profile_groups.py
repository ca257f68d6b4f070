#!/usr/bin/env python3
"""Groups a worker's perf samples by what the sampled frame was doing (bench/profile.sh).

    perf script -i X.perf.data -F ip,sym,dso | python3 bench/profile_groups.py NAME

Prints the kernel/user split of the samples and charges each user-space sample to the
innermost frame of its stack that falls in one of GROUPS (for mcplb; another program's
frames that match none are listed by their own name).
"""
import collections
import re
import sys

GROUPS = [
    ("clock reads (vDSO clock_gettime, Timespec)", ["clock_gettime", "Timespec", "Instant"]),
    ("copies (memmove/memcpy/memset)", ["memmove", "memcpy", "memset"]),
    ("allocator (mimalloc or malloc)", ["mi_", "_mi", "malloc", "free"]),
    ("JSON-RPC envelope scan (protocol crate)", ["mcplb_protocol"]),
    ("HTTP head parse (httparse)", ["httparse"]),
    ("statistics (record, Triple, loop gaps)", ["record::record", "stats::", "loop_gap"]),
    ("monoio runtime (tasks, wakers, op completion, slab)", ["monoio::", "io_uring::"]),
    ("mcplb data path (own frames)", ["mcplb::"]),
]
FRAME = re.compile(r"\s*[0-9a-f]+\s+(.*)\s+\((.*)\)\s*$")


def stacks(text):
    for block in text.split("\n\n"):
        frames = [(m.group(1), m.group(2)) for m in map(FRAME.match, block.strip().splitlines()) if m]
        if frames:
            yield frames


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "worker"
    all_ = list(stacks(sys.stdin.read()))
    n = len(all_)
    if not n:
        sys.exit("no samples")
    counts = collections.Counter()
    user = 0
    for s in all_:
        if "kernel" in s[0][1]:
            continue
        user += 1
        hit = None
        for f, dso in s:
            hit = next((g for g, keys in GROUPS if any(k in f for k in keys)), None)
            if hit:
                break
            if not f.startswith("[unknown]") and "mcplb" not in dso and dso != "inlined":
                hit = f"{dso.rsplit('/', 1)[-1]}: {f}"
                break
        counts[hit or "unnamed frames"] += 1
    print(f"{name}: {n} samples, kernel {100 * (n - user) / n:.1f} %, user {100 * user / n:.1f} %")
    for g, v in counts.most_common(25):
        print(f"  {100 * v / n:5.2f} %  {g}")


if __name__ == "__main__":
    main()

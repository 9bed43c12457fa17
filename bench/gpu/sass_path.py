#!/usr/bin/env python3
"""Static cost of one path through a kernel's SASS: the instructions along given address ranges
and the cycles the compiler scheduled for them (the stall count of each instruction's control
word: the cycles before the same warp may issue its next instruction; dynamic waits on
scoreboards, barriers and other warps come on top). A floor on one warp's time for that path,
read without a GPU.

    cuobjdump -sass <object or library> > k.sass      (one kernel per file, or --function)
    python3 bench/gpu/sass_path.py k.sass 0x4ba0-0x60c0 0x64e0-0x64e0 ...

Ranges are inclusive instruction addresses as cuobjdump prints them; the path a dense turn of a
loop takes is found by reading its branches (which are taken when nothing is masked or
skipped). Prints the totals and, per opcode, the count and the scheduled cycles.
"""
import argparse
import collections
import re
import sys

INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* (0x[0-9a-f]+) \*/")
CONTROL = re.compile(r"/\* (0x[0-9a-f]+) \*/")


def instructions(lines):
    """(address, text, high 64 bits) of each instruction of cuobjdump -sass output."""
    out = []
    i = 0
    while i < len(lines):
        m = INSTRUCTION.match(lines[i])
        if m and i + 1 < len(lines):
            hi = CONTROL.search(lines[i + 1])
            out.append((int(m.group(1), 16), m.group(2).strip(), int(hi.group(1), 16)))
            i += 2
        else:
            i += 1
    return out


def stall_cycles(high):
    """The stall count: bits 105-108 of the 128-bit instruction (Volta through Hopper)."""
    return (high >> 41) & 0xF


def opcode(text):
    words = text.split()
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def list_loops(code):
    """Every backward branch's body (branch target .. branch), innermost first by address."""
    for address, text, _ in code:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)\s*$", text)
        if not m or int(m.group(1), 16) >= address:
            continue
        lo = int(m.group(1), 16)
        body = collections.Counter(opcode(t) for a, t, _ in code if lo <= a <= address)
        top = ", ".join(f"{op} {n}" for op, n in body.most_common(8))
        print(f"{lo:#x}-{address:#x}: {sum(body.values())} instructions ({top})")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sass", help="cuobjdump -sass output")
    ap.add_argument("ranges", nargs="*", help="inclusive address ranges, 0xLO-0xHI")
    ap.add_argument("--loops", action="store_true",
                    help="list the loops instead (each backward branch: its range, instruction "
                         "count and commonest opcodes), to find the ranges to pass")
    args = ap.parse_args()
    with open(args.sass) as f:
        code = instructions(f.read().split("\n"))
    if args.loops:
        list_loops(code)
        return
    if not args.ranges:
        sys.exit("give address ranges, or --loops")
    ranges = []
    for r in args.ranges:
        lo, _, hi = r.partition("-")
        ranges.append((int(lo, 16), int(hi or lo, 16)))
    count, cycles = collections.Counter(), collections.Counter()
    for address, text, high in code:
        if any(lo <= address <= hi for lo, hi in ranges):
            op = opcode(text)
            count[op] += 1
            cycles[op] += stall_cycles(high)
    if not count:
        sys.exit("no instruction in those ranges")
    print(f"{sum(count.values())} instructions, {sum(cycles.values())} scheduled cycles")
    print("| opcode | instructions | scheduled cycles |\n|---|---|---|")
    for op, n in count.most_common():
        print(f"| {op} | {n} | {cycles[op]} |")


if __name__ == "__main__":
    main()

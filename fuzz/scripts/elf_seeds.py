#!/usr/bin/env python3
"""Writes small synthetic ELF files into fuzz/corpus/elf_note/seed-*.

Each is an ELF header, a program header table and note segments (no code,
no sections): enough for the build-id parser, a few hundred bytes each.
Run from anywhere: python3 fuzz/scripts/elf_seeds.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "elf_note")
PT_LOAD, PT_NOTE = 1, 4
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3


def a4(n):
    return (n + 3) & ~3


def note(end, name, ntype, desc, align=4):
    """One note: header, name padded to 4, desc padded to `align`."""
    pad = lambda b, a: b + b"\0" * ((-len(b)) % a)
    return struct.pack(end + "III", len(name), len(desc), ntype) + pad(name, 4) + pad(desc, align)


def elf(bits=64, end="<", etype=ET_DYN, segs=(), version=1, phentsize=None, phnum=None):
    """segs: list of (p_type, payload, p_align, extra_offset)."""
    ehsize, phsz = (64, 56) if bits == 64 else (52, 32)
    phoff = ehsize
    data_off = phoff + phsz * len(segs)
    phdrs, blobs = b"", b""
    for p_type, payload, p_align, skew in segs:
        blobs += b"\xee" * skew
        off = data_off + len(blobs)
        blobs += payload
        if bits == 64:
            phdrs += struct.pack(end + "IIQQQQQQ", p_type, 4, off, off, off, len(payload), len(payload), p_align)
        else:
            phdrs += struct.pack(end + "IIIIIIII", p_type, off, off, off, len(payload), len(payload), 4, p_align)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if end == "<" else 2, version, 0]) + b"\0" * 8
    fmt = end + ("HHIQQQIHHHHHH" if bits == 64 else "HHIIIIIHHHHHH")
    hdr = ident + struct.pack(
        fmt, etype, 62 if bits == 64 else 3, 1, 0x1000, phoff, 0, 0, ehsize,
        phentsize or phsz, len(segs) if phnum is None else phnum, 64 if bits == 64 else 40, 0, 0)
    assert len(hdr) == ehsize
    return hdr + phdrs + blobs


def main():
    gnu = b"GNU\0"
    bid20 = bytes(range(0xa0, 0xb4))
    bid8 = bytes(range(1, 9))
    prop = note("<", gnu, 5, b"\x02\0\0\xc0\x04\0\0\0\x03\0\0\0\0\0\0\0", 8)
    seeds = {
        "seed-64le-dyn": elf(64, "<", ET_DYN, [(PT_NOTE, note("<", gnu, 3, bid20), 4, 0)]),
        "seed-32le-exec": elf(32, "<", ET_EXEC, [(PT_NOTE, note("<", gnu, 3, bid8), 4, 0)]),
        "seed-64be-exec": elf(64, ">", ET_EXEC, [(PT_NOTE, note(">", gnu, 3, bid20), 4, 0)]),
        "seed-32be-dyn": elf(32, ">", ET_DYN, [(PT_NOTE, note(">", gnu, 3, b"\x42"), 4, 0)]),
        # Another note first, then an over-long id (skipped), then the id.
        "seed-many-notes": elf(64, "<", ET_DYN, [(PT_NOTE, note("<", b"Go\0\0", 4, b"abcd")
                                                  + note("<", gnu, 3, bytes(24))
                                                  + note("<", gnu, 3, bid20[:16]), 4, 0)]),
        # A load segment, a property note segment (align 8), then the id.
        "seed-two-segments": elf(64, "<", ET_DYN, [(PT_LOAD, b"\0" * 16, 0x1000, 0),
                                                   (PT_NOTE, prop, 8, 0),
                                                   (PT_NOTE, note("<", gnu, 3, bid20), 4, 0)]),
        # Note segment at an odd offset; id of 5 bytes (padded end inside).
        "seed-misaligned": elf(64, "<", ET_EXEC, [(PT_NOTE, note("<", gnu, 3, b"\x01\x02\x03\x04\x05"), 4, 3)]),
        # Not ET_EXEC/ET_DYN: no build id for the kernel.
        "seed-rel": elf(64, "<", ET_REL, [(PT_NOTE, note("<", gnu, 3, bid20), 4, 0)]),
        # Name without its NUL (n_namesz 3): not the GNU note.
        "seed-namesz3": elf(64, "<", ET_DYN, [(PT_NOTE, struct.pack("<III", 3, 4, 3) + b"GNU\0" + b"wxyz", 4, 0)]),
    }
    os.makedirs(OUT, exist_ok=True)
    for name, data in seeds.items():
        assert len(data) < 10 * 1024
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Rewrites a .cu file for tests/ops/emu/emu_cuda.h: kernel launches become emu::launch calls,
the dynamic shared memory declaration becomes the emulated block's buffer. Usage:
emulate.py IN.cu OUT.cpp"""
import re
import sys

src = open(sys.argv[1]).read()
src, n_smem = re.subn(r"extern __shared__ __align__\(\d+\) unsigned char (\w+)\[\];",
                      r"unsigned char* \1 = emu::shared_mem();", src)
src, n_launch = re.subn(r"([\w:<>]+)<<<(.*?)>>>\((.*?)\);",
                        lambda m: f"emu::launch({m.group(1)}, {m.group(2)}, {m.group(3)});", src,
                        flags=re.S)
if n_launch == 0:
    sys.exit(f"{sys.argv[1]}: no launches found")
open(sys.argv[2], "w").write(f'#line 1 "{sys.argv[1]}"\n' + src)

#!/bin/sh
# The peer benchmark (diffusers_peer.py) with BASELINE.md's "tuned" environment: glibc keeps
# freed memory instead of returning it to the kernel after each op (a first-touch page fault
# costs ~8 us per 4 KiB page on these VMs), and OpenBLAS does not start its own threads.
# Needs python3-torch and libopenblas0-pthread (Debian), diffusers v0.31.0 and huggingface_hub v0.26
# sources, and a safetensors package (a stand-in that imports is enough) on PYTHONPATH.
# Usage: DIFFUSERS_SRC=/path/to/diffusers-v0.31.0/src [HUB_SRC=...] bench/peer/run.sh [--model M] [--reps N] [--phase P]
set -eu
here=$(dirname "$0")
export MALLOC_MMAP_THRESHOLD_=33554432   # glibc's largest allowed value (32 MiB)
export MALLOC_MMAP_MAX_=0               # and no mmap at all: larger tensors would still fault
export MALLOC_TRIM_THRESHOLD_=68719476736
export MALLOC_TOP_PAD_=1073741824
export OPENBLAS_NUM_THREADS=1
export PYTHONPATH="${DIFFUSERS_SRC:?set DIFFUSERS_SRC to diffusers v0.31.0 src}${HUB_SRC:+:$HUB_SRC}${PYTHONPATH:+:$PYTHONPATH}"
exec /usr/bin/python3 "$here/diffusers_peer.py" "$@"

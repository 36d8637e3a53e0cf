#!/usr/bin/env bash
# No panic and no allocator on the module's paths.
#
# Builds examples/kmod (a kernel-module-style staticlib over kstackmap) in
# release for x86_64-unknown-none, with fat LTO and panic=abort, then links
# it with rust-lld using only its exported `kstackmap_*` entry points as
# roots and --gc-sections, so that what is left is exactly the code those
# entry points can reach. That image must contain no panic machinery
# (core::panicking::*, panic_fmt, panic_bounds_check, slice_*_fail,
# unwrap_failed, ... nor the module's own panic handler, `panic_halt`), no
# allocator symbol (__rust_alloc, __rg_alloc, malloc, ...), and no
# undefined symbol at all. On failure it names each call site of a panic
# symbol with its source line.
#
# Before that it checks the example's formatting and lints and runs its
# test of the entry points on the host.
#
# The symbol check itself is scripts/symcheck.sh (shared with capi/check.sh).
# Needs only rustup: it installs the target and llvm-tools (llvm-nm,
# llvm-objdump), falling back to binutils; rust-lld ships with rustc.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=x86_64-unknown-none
out=${CARGO_TARGET_DIR:-$root/target}/kmod
expected="kstackmap_init kstackmap_get_stackid kstackmap_lookup kstackmap_delete"

rustup target add "$target" >/dev/null

cd "$here"
cargo fmt --check
cargo clippy --locked --release --target "$target" --target-dir "$out" -- -D warnings
# The entry points' behaviour, on the host (the test build has std).
cargo clippy --locked --tests --target-dir "$out" -- -D warnings
cargo test --locked --target-dir "$out"
cargo build --locked --release --target "$target" --target-dir "$out"
lib=$out/$target/release/libkstackmap_kmod.a

# shellcheck disable=SC2086 # one argument per expected name
exec bash "$root/scripts/symcheck.sh" kmod "$lib" kstackmap_ $expected

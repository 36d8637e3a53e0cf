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
# Needs only rustup: it installs the target and llvm-tools (llvm-nm,
# llvm-objdump), falling back to binutils; rust-lld ships with rustc.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=x86_64-unknown-none
out=${CARGO_TARGET_DIR:-$root/target}/kmod
expected="kstackmap_init kstackmap_get_stackid kstackmap_lookup kstackmap_delete"

rustup target add "$target" >/dev/null
host=$(rustc -vV | sed -n 's/^host: //p')
bin=$(rustc --print sysroot)/lib/rustlib/$host/bin
lld=$bin/rust-lld
# llvm-tools match rustc's LLVM; binutils (same options) if they can't be
# had, or if KMOD_CHECK_TOOLS=binutils asks for them.
if [[ ${KMOD_CHECK_TOOLS:-} != binutils ]] && rustup component add llvm-tools >/dev/null 2>&1 &&
    [[ -x $bin/llvm-nm && -x $bin/llvm-objdump ]]; then
    nm=$bin/llvm-nm
    objdump=$bin/llvm-objdump
else
    if ! command -v nm >/dev/null || ! command -v objdump >/dev/null; then
        apt-get update -qq && apt-get install -y -qq binutils >/dev/null
    fi
    nm=$(command -v nm)
    objdump=$(command -v objdump)
fi
for tool in "$nm" "$objdump" "$lld"; do
    [[ -x $tool ]] || { echo "check.sh: $tool missing" >&2; exit 1; }
done

cd "$here"
cargo fmt --check
cargo clippy --locked --release --target "$target" --target-dir "$out" -- -D warnings
# The entry points' behaviour, on the host (the test build has std).
cargo clippy --locked --tests --target-dir "$out" -- -D warnings
cargo test --locked --target-dir "$out"
cargo build --locked --release --target "$target" --target-dir "$out"
lib=$out/$target/release/libkstackmap_kmod.a

# The roots: every exported entry point, and at least the expected ones.
mapfile -t entries < <("$nm" --defined-only --extern-only "$lib" 2>/dev/null |
    awk '$2 == "T" && $3 ~ /^kstackmap_/ { print $3 }' | sort -u)
for e in $expected; do
    [[ " ${entries[*]} " == *" $e "* ]] || { echo "check.sh: entry point $e not exported" >&2; exit 1; }
done

elf=$out/kmod-reachable.elf
roots=()
for e in "${entries[@]}"; do roots+=(--undefined="$e"); done
"$lld" -flavor gnu -static -nostdlib --gc-sections --warn-unresolved-symbols \
    --entry="${entries[0]}" "${roots[@]}" -o "$elf" "$lib"

# Raw and demangled names side by side, so a pattern can match either.
syms=$(paste -d' ' <("$nm" --no-sort "$elf") <("$nm" --no-sort --demangle "$elf"))
# POSIX EREs (grep -E and awk alike): no \b, so word ends are spelled out.
end='([^A-Za-z0-9_]|$)'
panic_re="panick|panic_|_panic|begin_unwind|_fail(ed)?$end|assert_failed"
alloc_re="__rust_(alloc|dealloc|realloc|alloc_zeroed|alloc_error|no_alloc)|__rg_|__rdl_|(^|[^A-Za-z0-9_])(malloc|calloc|realloc|free|aligned_alloc|posix_memalign)$end|alloc_error|capacity_overflow"
panics=$(grep -E "$panic_re" <<<"$syms" || true)
allocs=$(grep -E "$alloc_re" <<<"$syms" || true)
undef=$("$nm" --undefined-only "$elf" || true)
count() { [[ -z $1 ]] && echo 0 || wc -l <<<"$1"; }

echo "kmod check: ${#entries[@]} entry points (${entries[*]})"
echo "kmod check: $(count "$syms") symbols reachable, $(count "$panics") panic, $(count "$allocs") allocator, $(count "$undef") undefined"
status=0
if [[ -n $panics ]]; then
    echo "kmod check: FAIL: panic symbols reachable from the entry points:"
    awk '{ $1 = ""; print "   " $0 }' <<<"$panics"
    echo "kmod check: call sites (function | last source line | instruction):"
    "$objdump" -d -l --demangle --no-show-raw-insn "$elf" |
        awk -v re="$panic_re" '
            /^[0-9a-f]+ <.*>:$/ { fn = $0; next }
            /^; / { src = $2; next }                  # llvm-objdump -l
            /^\/.*:[0-9]+/ { src = $1; next }        # GNU objdump -l
            /(call|jmp)/ && $0 ~ re && fn !~ re { gsub(/[ \t]+/, " "); print "   " fn " | " src " |" $0 }'
    status=1
fi
if [[ -n $allocs ]]; then
    echo "kmod check: FAIL: allocator symbols reachable:"
    awk '{ $1 = ""; print "   " $0 }' <<<"$allocs"
    status=1
fi
if [[ -n $undef ]]; then
    echo "kmod check: FAIL: undefined symbols (the module must need nothing from outside):"
    sed 's/^/   /' <<<"$undef"
    status=1
fi
[[ $status == 0 ]] && echo "kmod check: ok: nothing reachable from the entry points can panic or allocate"
exit $status

#!/usr/bin/env bash
# No panic, no allocator, nothing undefined reachable from a static
# library's C entry points.
#
#   scripts/symcheck.sh LABEL LIB PREFIX [EXPECTED...]
#
# Links LIB (a Rust staticlib, built with panic=abort and ideally fat LTO)
# with rust-lld using every exported function whose name starts with
# PREFIX as a root and --gc-sections, so that what is left is exactly the
# code those entry points can reach. That image must contain no panic
# machinery (core::panicking::*, panic_fmt, panic_bounds_check,
# slice_*_fail, unwrap_failed, ... nor the library's own panic handler,
# whose name must contain "panic"), no allocator symbol (__rust_alloc,
# __rg_alloc, malloc, ...), and no undefined symbol at all. Each name in
# EXPECTED must be among the entry points. On failure it names each call
# site of a panic symbol with its source line. SYMCHECK_ALLOW_UNDEFINED
# lists names that may stay undefined (for a hosted target's library, the
# C runtime's memset/memcpy/... that any C compiler also calls).
#
# Used by examples/kmod/check.sh and capi/check.sh. Needs only rustup: it
# installs llvm-tools (llvm-nm, llvm-objdump), falling back to binutils
# (or KMOD_CHECK_TOOLS=binutils); rust-lld ships with rustc.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 LABEL LIB PREFIX [EXPECTED...]" >&2; exit 2; }
label=$1 lib=$2 prefix=$3
shift 3
expected=("$@")

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
    [[ -x $tool ]] || { echo "$label check: $tool missing" >&2; exit 1; }
done
[[ -f $lib ]] || { echo "$label check: $lib missing" >&2; exit 1; }

# The roots: every exported entry point, and at least the expected ones.
mapfile -t entries < <("$nm" --defined-only --extern-only "$lib" 2>/dev/null |
    awk -v p="$prefix" '$2 == "T" && index($3, p) == 1 { print $3 }' | sort -u)
[[ ${#entries[@]} -gt 0 ]] || { echo "$label check: no $prefix* entry point in $lib" >&2; exit 1; }
for e in "${expected[@]}"; do
    [[ " ${entries[*]} " == *" $e "* ]] || { echo "$label check: entry point $e not exported" >&2; exit 1; }
done

elf=$(dirname "$lib")/$label-reachable.elf
roots=()
for e in "${entries[@]}"; do roots+=(--undefined="$e"); done
"$lld" -flavor gnu -static -nostdlib --gc-sections --warn-unresolved-symbols \
    --entry="${entries[0]}" "${roots[@]}" -o "$elf" "$lib" 2>/dev/null

# Raw and demangled names side by side, so a pattern can match either.
syms=$(paste -d' ' <("$nm" --no-sort "$elf") <("$nm" --no-sort --demangle "$elf"))
# POSIX EREs (grep -E and awk alike): no \b, so word ends are spelled out.
end='([^A-Za-z0-9_]|$)'
panic_re="panick|panic_|_panic|begin_unwind|_fail(ed)?$end|assert_failed"
alloc_re="__rust_(alloc|dealloc|realloc|alloc_zeroed|alloc_error|no_alloc)|__rg_|__rdl_|(^|[^A-Za-z0-9_])(malloc|calloc|realloc|free|aligned_alloc|posix_memalign)$end|alloc_error|capacity_overflow"
panics=$(grep -E "$panic_re" <<<"$syms" || true)
allocs=$(grep -E "$alloc_re" <<<"$syms" || true)
undef=$("$nm" --undefined-only "$elf" | awk -v allow=" ${SYMCHECK_ALLOW_UNDEFINED:-} " \
    'index(allow, " " $NF " ") == 0' || true)
count() { [[ -z $1 ]] && echo 0 || wc -l <<<"$1"; }

echo "$label check: ${#entries[@]} entry points (${entries[*]})"
echo "$label check: $(count "$syms") symbols reachable, $(count "$panics") panic, $(count "$allocs") allocator, $(count "$undef") undefined"
status=0
if [[ -n $panics ]]; then
    echo "$label check: FAIL: panic symbols reachable from the entry points:"
    awk '{ $1 = ""; print "   " $0 }' <<<"$panics"
    echo "$label check: call sites (function | last source line | instruction):"
    "$objdump" -d -l --demangle --no-show-raw-insn "$elf" |
        awk -v re="$panic_re" '
            /^[0-9a-f]+ <.*>:$/ { fn = $0; next }
            /^; / { src = $2; next }                  # llvm-objdump -l
            /^\/.*:[0-9]+/ { src = $1; next }        # GNU objdump -l
            /(call|jmp)/ && $0 ~ re && fn !~ re { gsub(/[ \t]+/, " "); print "   " fn " | " src " |" $0 }'
    status=1
fi
if [[ -n $allocs ]]; then
    echo "$label check: FAIL: allocator symbols reachable:"
    awk '{ $1 = ""; print "   " $0 }' <<<"$allocs"
    status=1
fi
if [[ -n $undef ]]; then
    echo "$label check: FAIL: undefined symbols (the library must need nothing from outside):"
    sed 's/^/   /' <<<"$undef"
    status=1
fi
[[ $status == 0 ]] && echo "$label check: ok: nothing reachable from the entry points can panic or allocate"
exit $status

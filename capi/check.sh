#!/usr/bin/env bash
# The C library, as C code builds and links it:
#
# 1. include/kstackmap.h is what cbindgen makes of src/ now (tests/header.rs);
# 2. libkstackmap.a for x86_64-unknown-none (a kernel-like target) and for
#    the host, each linked with only its ksm_* functions as roots: nothing
#    reachable from them may panic, allocate or be undefined
#    (scripts/symcheck.sh, shared with examples/kmod/check.sh);
# 3. tests/c/test_capi.c, compiled with gcc -std=c11 -Wall -Wextra -Werror
#    -pthread against the static library and against the shared one, and
#    run; it prints "N passed, N failed";
# 4. the C examples of README.md and capi/README.md: a block with a main()
#    is built and run, any other compiled.
#
# The library is built with the workspace's `capi` profile (panic=abort,
# fat LTO): see capi/README.md. Needs ../shared/vectors beside the
# repository (or KSM_VECTORS=path/to/jhash2.tsv). Installs gcc if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
vectors=${KSM_VECTORS:-$root/../shared/vectors/jhash2.tsv}
kernel_target=x86_64-unknown-none
# The functions of DESIGN.md's contract (the check also covers every other
# ksm_* export).
expected=(ksm_map_storage_size ksm_map_init ksm_get_stackid ksm_lookup ksm_delete
    ksm_get_next_key ksm_get_stackid_pe ksm_depot_storage_size ksm_depot_init
    ksm_depot_intern ksm_depot_get)

rustup target add "$kernel_target" >/dev/null
command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc libc6-dev >/dev/null; }
cd "$root"

cargo test --locked -p kstackmap-capi --test header

# --crate-type staticlib: a bare target has no shared libraries.
cargo rustc --locked -p kstackmap-capi --profile capi --target "$kernel_target" --crate-type staticlib
bash scripts/symcheck.sh capi-"$kernel_target" \
    "$target_dir/$kernel_target/capi/libkstackmap.a" ksm_ "${expected[@]}"

cargo build --locked -p kstackmap-capi --profile capi
out=$target_dir/capi
# On a hosted target the compiler's calls to memset & co. go to libc.
SYMCHECK_ALLOW_UNDEFINED="memset memcpy memmove memcmp bcmp" \
    bash scripts/symcheck.sh capi-host "$out/libkstackmap.a" ksm_ "${expected[@]}"

cflags=(-std=c11 -Wall -Wextra -Werror -pthread -I "$here/include")
gcc "${cflags[@]}" "$here/tests/c/test_capi.c" "$out/libkstackmap.a" -o "$out/test_capi"
gcc "${cflags[@]}" "$here/tests/c/test_capi.c" -L "$out" -l:libkstackmap.so \
    -Wl,-rpath,"$out" -o "$out/test_capi_shared"
echo "capi: C test, static library:"
"$out/test_capi" "$vectors"
echo "capi: C test, shared library:"
"$out/test_capi_shared" "$vectors"

# The READMEs' C blocks, each as its own file.
n=0
for readme in "$root/README.md" "$here/README.md"; do
    while IFS= read -r -d '' block; do
        n=$((n + 1))
        src=$out/readme-$n.c
        printf '%s' "$block" >"$src"
        if grep -q 'int main(' "$src"; then
            gcc "${cflags[@]}" "$src" "$out/libkstackmap.a" -o "$out/readme-$n"
            "$out/readme-$n" >/dev/null || { echo "capi: $readme's C block $n failed" >&2; exit 1; }
        else
            gcc "${cflags[@]}" -c "$src" -o "$out/readme-$n.o"
        fi
    done < <(awk '/^```c$/ { on = 1; next } /^```$/ && on { on = 0; printf "%c", 0; next } on' "$readme")
done
[[ $n -ge 2 ]] || { echo "capi: expected C blocks in the READMEs, found $n" >&2; exit 1; }
echo "capi: $n README C blocks build (and run, with a main)"

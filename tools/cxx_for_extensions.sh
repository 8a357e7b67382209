#!/usr/bin/env bash
# Print "CXX CC": the C++ and C compilers to build a torch extension with (tools/build_mmcv.sh uses it).
#
#   tools/cxx_for_extensions.sh
#
# An extension must link libstdc++ dynamically: the Python process already has libstdc++ loaded (torch needs it),
# and a second, static copy inside the extension crashes at its first iostream use (a segmentation fault in
# std::ostream::_M_insert, e.g. mmcv's get_compiling_cuda_version). Some CUDA images set CXX / CC to a toolchain
# that links libstdc++ statically into every shared object. So: $CXX (default c++) if a shared object it links
# needs libstdc++.so, else the first of /usr/bin/g++, /usr/bin/c++ that does (with its gcc / cc as CC), else an
# error. Messages go to stderr.
set -euo pipefail
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <sstream>\nstd::string f(long v) { std::ostringstream o; o << v; return o.str(); }\n' > "$probe/t.cpp"

links_libstdcxx_dynamically() {   # COMPILER; status 2: it cannot build a shared object at all
    "$1" -shared -fPIC -o "$probe/t.so" "$probe/t.cpp" 2>/dev/null || return 2
    if command -v readelf > /dev/null; then
        readelf -d "$probe/t.so" | grep -q 'NEEDED.*libstdc++'
    else
        objdump -p "$probe/t.so" | grep -q 'NEEDED.*libstdc++'
    fi
}

cxx=${CXX:-c++}
cc=${CC:-cc}
links_libstdcxx_dynamically "$cxx" && { echo "$cxx $cc"; exit 0; } || status=$?
why="links libstdc++ statically into shared objects (an extension built so crashes beside torch's libstdc++)"
(( status == 2 )) && why="cannot build a C++ shared object"
for alt in /usr/bin/g++ /usr/bin/c++; do
    [[ -x $alt && $alt != "$cxx" ]] && links_libstdcxx_dynamically "$alt" || continue
    alt_cc=/usr/bin/cc
    [[ $alt == */g++ && -x /usr/bin/gcc ]] && alt_cc=/usr/bin/gcc
    echo "[cxx_for_extensions] $cxx $why; using $alt and $alt_cc instead." >&2
    echo "$alt $alt_cc"
    exit 0
done
echo "[cxx_for_extensions] $cxx $why, and neither /usr/bin/g++ nor /usr/bin/c++ links one against libstdc++.so:" \
     "set CXX (and CC) to a compiler that does." >&2
exit 1

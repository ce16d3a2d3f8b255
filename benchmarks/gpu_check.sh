#!/usr/bin/env bash
# GPU evidence for vitprune in one command, on a machine that reaches no package registry:
#
#   bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options, e.g. --tiny or --only speedup]
#   bash benchmarks/gpu_check.sh --fetch-wheels    # beforehand, on a machine with a package registry
#
# Installs the wheels that came along in benchmarks/wheels/ (pydantic for vitprune.evaluators,
# Torch-Pruning for the baseline) into a temporary folder with `pip install --no-index`, then runs
# benchmarks/gpu_check.py on this source tree. It writes OUT_DIR/gpu_check.json and gpu_check.md.
# Without the wheels it still runs when pydantic is already there (the Torch-Pruning section says
# it was skipped). PYTHON picks the interpreter (default python3); GPU_CHECK_TIMEOUT_S caps the
# run (default 470 s: 8 minutes with the install).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ${1:-} == --fetch-wheels ]]; then
    # The GPU machine runs Python 3.12 on x86_64 and reaches no registry: its wheels travel along.
    pip=(${PIP:-python3 -m pip} download --quiet --only-binary=:all: --python-version 3.12
        --platform manylinux2014_x86_64 -d "$here/wheels")
    "${pip[@]}" pydantic && "${pip[@]}" --no-deps torch-pruning || exit 2
    echo "gpu_check: wheels in $here/wheels ($(du -sh "$here/wheels" | cut -f1))"
    exit 0
fi
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]" >&2
    exit 2
fi
out=$1
shift
python=${PYTHON:-python3}
wheels=$here/wheels
site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
trap 'rm -rf "$site"' EXIT
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

has_pydantic() {
    "$python" -c 'import pydantic, sys; sys.exit(int(pydantic.VERSION.split(".")[0]) < 2)' 2>/dev/null
}
has_wheel() {
    compgen -G "$wheels/$1-*.whl" >/dev/null
}
# unpack NAME...: a wheel is a zip archive, and unpacking it onto the path installs it (no pip needed).
unpack() {
    local files=() name
    shopt -s nullglob
    for name in "$@"; do files+=("$wheels/$name"-*.whl); done
    shopt -u nullglob
    "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$site" "${files[@]}"
}
# install DISTRIBUTION PIP_OPTIONS... -- WHEELS...: from benchmarks/wheels/ into $site, never from an
# index; when pip is missing or refuses, the named wheels are unpacked instead.
install() {
    local name=$1 options=()
    shift
    while [[ $1 != -- ]]; do options+=("$1"); shift; done
    shift
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" \
        --target "$site" "${options[@]}" "$name" && return 0
    echo "gpu_check: pip could not install $name from benchmarks/wheels/; unpacking its wheels instead" >&2
    unpack "$@"
}

if ! has_pydantic; then
    if has_wheel pydantic; then
        install pydantic -- pydantic pydantic_core annotated_types typing_inspection typing_extensions
    fi
    if ! has_pydantic; then
        echo "gpu_check: error: pydantic >= 2 is missing (vitprune.evaluators needs it) and benchmarks/wheels/" \
            "holds no wheel that installs here; BENCHMARKS.md section 5 says how to fetch them" >&2
        exit 2
    fi
fi
if ! "$python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch_pruning") is None)'; then
    if has_wheel torch_pruning; then
        install torch-pruning --no-deps -- torch_pruning || echo "gpu_check: Torch-Pruning did not install; its section will be skipped" >&2
    else
        echo "gpu_check: no Torch-Pruning wheel in benchmarks/wheels/; its section will be skipped" >&2
    fi
fi

# SIGINT at the limit: the check records the section it was in and keeps everything before it.
timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-470}" \
    "$python" "$here/gpu_check.py" --source-tree --out "$out" "$@"
status=$?
if [[ $status -eq 124 ]]; then
    echo "gpu_check: stopped at the time limit; $out/gpu_check.json holds every section that finished" >&2
fi
echo "gpu_check: report in $out/gpu_check.json and $out/gpu_check.md (exit status $status)"
exit $status

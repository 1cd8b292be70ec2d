#!/usr/bin/env bash
# Install progan on one cluster node. `ray up` runs this as a setup command on every node.
#
# Usage: setup_node.sh [--venv DIR] [--python EXE] [--dry-run] SOURCE
#   SOURCE     a folder holding exactly one progan wheel (what ray_cluster.yaml mounts at ~/progan/dist),
#              a .whl file, or a pip requirement. A git requirement must be pinned to a tag or
#              commit, for example 'git+https://github.com/<org>/progan.git@v0.1.0'.
#   --venv DIR install into the virtual environment DIR, created with --python if missing.
#              Without it, install into the Python first on PATH (the Ray Docker image's Python).
#   --python   interpreter that creates the venv (default: python3.11).
#   --dry-run  print the commands instead of running them.
# Build the wheel on the machine that runs `ray up`, from the repository root:
#   python -m pip wheel --no-deps --wheel-dir dist .
# Nothing here needs credentials: pip reads public PyPI, and S3 access comes from the instance
# profile or from variables set when jobs are submitted.
set -euo pipefail

readonly REQUIRED_PYTHON="3.11"
readonly REQUIRED_RAY="2.60.0"

# Print the comment block at the top of this file.
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

fail() {
    echo "setup_node.sh: $*" >&2
    exit 2
}

run() {
    if [[ $dry_run == 1 ]]; then
        printf '%q' "$1"
        printf ' %q' "${@:2}"
        printf '\n'
    else
        "$@"
    fi
}

# Print the one progan wheel in folder $1, or fail naming what was found.
find_wheel() {
    local folder=$1
    local wheels=()
    shopt -s nullglob
    wheels=("$folder"/progan-*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -eq 0 ]]; then
        fail "no progan-*.whl found in $folder. Build one in the repository root with" \
             "'python -m pip wheel --no-deps --wheel-dir dist .' and run 'ray up' again."
    fi
    if [[ ${#wheels[@]} -gt 1 ]]; then
        fail "found ${#wheels[@]} progan wheels in $folder (${wheels[*]}). Keep exactly one."
    fi
    echo "${wheels[0]}"
}

# Print what pip should install for SOURCE, failing on an unpinned git requirement.
resolve_source() {
    local source=$1
    if [[ -d $source ]]; then
        find_wheel "$source"
    elif [[ $source == *.whl ]]; then
        [[ -f $source ]] || fail "wheel not found: $source"
        echo "$source"
    elif [[ $source == git+* ]]; then
        # Only an '@' after the host starts a ref, because ssh URLs contain user@host too.
        local after_host=${source#git+*://*/}
        [[ $after_host == *@?* ]] || fail "git requirement is not pinned: $source. Append @<tag or commit>."
        echo "$source"
    else
        echo "$source"
    fi
}

venv=""
base_python="python3.11"
dry_run=0
source_arg=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --venv) [[ $# -ge 2 ]] || fail "--venv needs a folder"; venv=$2; shift 2 ;;
        --python) [[ $# -ge 2 ]] || fail "--python needs an interpreter"; base_python=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) [[ -z $source_arg ]] || fail "more than one SOURCE given: $source_arg, $1"; source_arg=$1; shift ;;
    esac
done
[[ -n $source_arg ]] || fail "missing SOURCE (see --help)"

package=$(resolve_source "$source_arg")

if [[ -n $venv ]]; then
    if [[ ! -x $venv/bin/python ]]; then
        command -v "$base_python" >/dev/null || fail "$base_python not found. Install Python $REQUIRED_PYTHON or pass --python."
        run "$base_python" -m venv "$venv"
    fi
    python=$venv/bin/python
else
    python=$(command -v python3) || fail "python3 not found on PATH"
fi

if [[ -x $python ]]; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $version == "$REQUIRED_PYTHON" ]] || fail "$python is Python $version, but progan needs $REQUIRED_PYTHON."
    # pip would replace a different Ray with the pinned one, under a Ray that may be running.
    installed_ray=$("$python" -c 'import ray; print(ray.__version__)' 2>/dev/null || true)
    if [[ -n $installed_ray && $installed_ray != "$REQUIRED_RAY" ]]; then
        echo "setup_node.sh: warning: $python has Ray $installed_ray, and pip installs Ray $REQUIRED_RAY" \
             "over it. Use an image or venv with Ray $REQUIRED_RAY." >&2
    fi
fi

# The first install brings the dependencies (torch, ray, mlflow, ...). The second replaces progan
# itself even when the version number is unchanged, so a rebuilt wheel always lands.
run "$python" -m pip install --quiet "$package"
run "$python" -m pip install --quiet --no-deps --force-reinstall "$package"
if [[ $dry_run == 0 ]]; then
    "$python" -c 'import ray, torch, mlflow, gan, orchestrator; print(f"progan installed: ray {ray.__version__}, torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), mlflow {mlflow.__version__}")'
fi

#!/usr/bin/env bash
# Mutation testing of the modules where a silent mistake costs most (docs/mutation.md): mutmut mutates
# them in a copy (./mutants), runs the tests of [tool.mutmut] in pyproject.toml that call each mutated
# function, and this script prints the score per module.
#
#   pip install -e '.[mutation]'
#   scripts/mutation.sh                          # every module of [tool.mutmut] only_mutate (about 1 h on 1 core)
#   scripts/mutation.sh vocab/count eval/metrics  # these modules only
#   scripts/mutation.sh 'polyglot_distil.fingerprints.x_token_cache_key*'     # a mutmut name pattern
#   scripts/mutation.sh --score                  # print the scores of the last runs, run nothing
#   scripts/mutation.sh --recheck vocab/select -- tests/test_vocab.py   # after adding tests: the
#                                                # mutants still alive against these tests only
#   scripts/mutation.sh --generate               # only write ./mutants (every mutant "not checked"): then
#                                                # --recheck runs a module's mutants against the tests named,
#                                                # without mutmut tracing the whole test selection first
#
# Results stay in ./mutants between runs; `mutmut show NAME` (from this folder) prints one mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
# mutmut runs the tests from ./mutants: the copy must win over this checkout and an editable install,
# also in the subprocesses a test starts.
export PYTHONPATH="$PWD/mutants" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export POLYGLOT_SHARED_DATA=${POLYGLOT_SHARED_DATA:-$PWD/../shared/data}
# the tiny models of tests/conftest.py, built once for all the runs
export POLYGLOT_TEST_MODEL_STORE="$PWD/mutants/test-models"

if [ "${1:-}" = --generate ]; then
    mkdir -p mutants
    exec nice -n 15 "$python" -c 'from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
from mutmut.__main__ import set_mutant_under_test, setup_source_paths
set_mutant_under_test("mutant_generation"); copy_src_dir(); copy_also_copy_files(); setup_source_paths()
print(create_mutants(1))'
fi

if [ "${1:-}" = --recheck ]; then
    shift
    selection=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        case $1 in *'*'* | polyglot_distil.* | --timeouts) selection+=("$1") ;;
                   *) m=polyglot_distil.${1//\//.}; selection+=("${m%.py}") ;; esac
        shift
    done
    nice -n 15 "$python" scripts/mutation_recheck.py "${selection[@]}" "$@"
    echo "scores after: scripts/mutation.sh --recheck ${selection[*]} $*"
    exec "$python" scripts/mutation_score.py "${selection[@]/--timeouts}"
fi

patterns=()
modules=()
score_only=0
for arg in "$@"; do
    case $arg in
        --score) score_only=1 ;;
        *'*'*) patterns+=("$arg"); modules+=("$arg") ;;
        polyglot_distil.*) patterns+=("$arg.*"); modules+=("$arg") ;;
        *) module=polyglot_distil.${arg//\//.}; module=${module%.py}
           patterns+=("$module.*"); modules+=("$module") ;;
    esac
done
if [ "$score_only" = 0 ]; then
    mkdir -p mutants  # on PYTHONPATH before the interpreter starts
    nice -n 15 "$python" -c 'import sys; from mutmut.__main__ import cli; sys.argv[0] = "mutmut"; cli()' \
        run --max-children "${MUTATION_CHILDREN:-1}" ${patterns[@]+"${patterns[@]}"}
fi
[ "$score_only" = 1 ] || echo "scores after: scripts/mutation.sh $*"
"$python" scripts/mutation_score.py ${modules[@]+"${modules[@]}"}

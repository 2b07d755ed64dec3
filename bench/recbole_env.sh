#!/usr/bin/env bash
# A separate venv with RecBole 1.2.1 for bench/bench_recbole.py (kept out of ltrec's own environment).
#
#     bash bench/recbole_env.sh [VENV_DIR]      # default /tmp/ltrec-bench/recbole-venv
#
# torch is pinned to the CPU build ltrec uses (a bare `pip install recbole` would pull a multi-GB CUDA
# build). numpy < 2 because RecBole 1.2.1 still uses aliases removed in numpy 2 (np.float, np.int, ...).
# RecBole goes in with --no-deps and only what its SASRec/GRU4Rec training path imports: its requirements
# also list ray, hyperopt and thop, which only hyper-parameter search and FLOP counting use.
set -euo pipefail
VENV=${1:-/tmp/ltrec-bench/recbole-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "numpy<2" "scipy<1.14" "pandas<2.3" tqdm "colorlog==4.7.2" "colorama==0.4.4" \
    scikit-learn pyyaml tensorboard texttable tabulate psutil
"$VENV/bin/pip" install -q --no-deps recbole==1.2.1
"$VENV/bin/python" -c "import recbole, torch, numpy; print('recbole', recbole.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"

# Sourced by the one-command GPU scripts (run_h200.sh, official_h200.sh, followup_h200.sh) with $dir set: installs
# this checkout without touching the machine's packages (or puts it on PYTHONPATH where pip cannot) and records the
# machine, the commit and the versions in $dir/env.txt.
export PYTHONUNBUFFERED=1
# C++ that torch compiles on the machine (mmcv, Inductor's AOT packages) needs a compiler that links libstdc++
# dynamically; some CUDA images set CXX to one that does not
compilers=$(tools/cxx_for_extensions.sh) && read -r CXX CC <<< "$compilers" && export CXX CC
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    [[ -e visionssm/kernels ]] || ln -s ../kernels visionssm/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# the commit, flagged where the code that travelled differs from it (a device's checkout may carry an older .git)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  git rev-parse HEAD 2> /dev/null && [[ -n $(git status --porcelain -- visionssm kernels 2> /dev/null | head -n 1) ]] \
      && echo "(visionssm/ or kernels/ differ from that commit: the code measured is the working tree)"
  python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
  command -v nvcc > /dev/null && nvcc --version | tail -1
} | tee "$dir/env.txt"

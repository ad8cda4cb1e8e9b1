# Sourced by the scripts: puts the tools setup.sh installs on PATH (cargo's bin directory and
# the directory pip installs scripts into).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null); then
  export PATH="$py_scripts:$PATH"
fi

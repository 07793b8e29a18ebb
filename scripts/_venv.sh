# Shared by scripts/run, scripts/test and scripts/check: create .venv and install the project
# (with the extra named in $1, if any) pinned by requirements/constraints.txt. Reinstalls only
# when pyproject.toml or the constraints change.
venv_setup() {
    extra=$1
    py=${PYTHON:-python3}
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    stamp=.venv/.voicegw-installed$extra
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements/constraints.txt -nt "$stamp" ]; then
        echo "installing voicegw$extra into .venv ..." >&2
        .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
        .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".$extra"
        touch "$stamp"
    fi
}

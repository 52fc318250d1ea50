"""Stage entry points (`python -m flows.stages.<stage>`), the commands dvc.yaml runs.

`dvc repro` runs whichever `python` is first on PATH. Without the project's environment that is a Python lacking
its packages, and the first heavy import would end in a ModuleNotFoundError traceback; this guard, which imports
nothing itself (find_spec only looks), says in one sentence which environment to use instead.
"""

import importlib.util as _util
import sys as _sys

_NEEDED = ("numpy", "yaml", "pandas", "torch", "lightning", "omegaconf", "safetensors")
_missing = [name for name in _NEEDED if _util.find_spec(name) is None]
if _missing:
    print(
        f"twinflow: {_sys.executable} lacks the project's environment (no module {_missing[0]!r}); run "
        "`source tools/env.sh` first (it puts .venv/bin first on PATH, so `dvc repro` uses .venv/bin/python), "
        "or create it with `make venv`",
        file=_sys.stderr,
    )
    raise SystemExit(18)
del _util, _missing

# started by the flow's `dvc repro`: end with it, so a SIGKILLed pipeline leaves no stage training (flows/lifetime.py)
from flows.lifetime import die_with_parent_if_asked as _die_with_parent_if_asked  # noqa: E402

_die_with_parent_if_asked()
del _die_with_parent_if_asked

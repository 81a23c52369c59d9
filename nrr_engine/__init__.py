"""nrr-engine: a rules engine and nightly job that makes Net Revenue Retention true.

Public API: load settings with `load_config`, then `Engine(settings).execute()`.
"""
__version__ = "0.1.0"

from .config import Settings, load as load_config  # noqa: E402
from .errors import ExitCode, NrrError  # noqa: E402


def __getattr__(name):  # Engine pulls numpy in; keep `nrr-engine --help` fast
    if name == "Engine":
        from .engine import Engine
        return Engine
    raise AttributeError(name)


__all__ = ["Engine", "ExitCode", "NrrError", "Settings", "load_config", "__version__"]

"""byzlearn: Byzantine-robust distributed learning in PyTorch.

Robust and learned aggregation rules, a catalogue of attacks, a vectorised simulator and a
``torch.distributed`` runtime. See the README for the two set-up commands. From Python, on your own
model and data: ``byzlearn.simulate``, ``byzlearn.grid``, ``byzlearn.build_aggregator``,
``byzlearn.forge`` (``byzlearn.api``; imported on first use, so ``import byzlearn`` stays cheap).
"""

__version__ = "0.1.0"

_API = ("simulate", "grid", "as_dataset", "build_aggregator", "build_attack", "forge")


def __getattr__(name: str) -> object:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'byzlearn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

"""byzlearn: Byzantine-robust distributed learning in PyTorch.

Robust and learned aggregation rules, a catalogue of attacks, a vectorised simulator and a
``torch.distributed`` runtime. See the README for the two set-up commands.
"""

__version__ = "0.1.0"

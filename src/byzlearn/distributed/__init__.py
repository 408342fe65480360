"""The multi-process runtime on ``torch.distributed``: the simulator's runs on real processes and machines.

``byzlearn launch -n N CONFIG`` (N local processes) or ``torchrun --nproc-per-node N -m byzlearn run
CONFIG --engine distributed`` (also multi-node). Rank 0 is the parameter server (or, in decentralised
mode, a monitor); ranks 1..n are the workers. Modules:

- ``group``: process group from the environment, world layout, start-up watchdog, config broadcast;
- ``frames``: the framed messages and their checks (malformed input is Byzantine, never a crash);
- ``mesh``: the TCP links between ranks, every message checked before it is read (why not gloo: there);
- ``transport``: inboxes with deadlines and sender threads over those links;
- ``protocol``: tags and message sizes of the parameter-server protocol;
- ``server``: rank 0's rounds (first q of n within a deadline, crash detection, counters, DRACO decoding);
- ``worker``: honest and Byzantine workers (replaying the simulator's random streams);
- ``collusion``: the explicit channel through which the Byzantine workers act as one adversary;
- ``peers``: decentralised learning with Bracha's reliable broadcast over real messages;
- ``runtime``: the entry point of every process; ``launcher``: ``byzlearn launch``.
"""

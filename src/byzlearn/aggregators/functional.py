"""The maths of the aggregation rules: pure functions ``Tensor[n, d] -> Tensor[d]`` (or ``[m, d]``).

Every function takes the gradient batch ``G`` (one row per worker) and, where the rule needs it,
the number ``f`` of Byzantine rows to tolerate. No Python loops over workers or coordinates.
The exports are the public functions of the rule modules the catalogue lists
(``byzlearn.catalogue.RULE_MODULES``, each module's ``__all__``): a rule added there appears here.
"""

from __future__ import annotations

import inspect

from .. import catalogue as _catalogue

__all__: list[str] = []
for _module in _catalogue.RULE_MODULES:
    for _name in _module.__all__:
        _obj = getattr(_module, _name)
        if inspect.isfunction(_obj):
            globals()[_name] = _obj
            __all__.append(_name)
__all__.sort()
del _module, _name, _obj

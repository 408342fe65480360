"""The catalogue (``byzlearn.catalogue``): every registering module is listed, every entry is documented.

A rule or attack module that registers something but is missing from the catalogue fails here, instead
of its entries going silently missing for a caller that did not import it.
"""

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from byzlearn import catalogue
from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, functional
from byzlearn.attacks import ATTACKS

SRC = Path(catalogue.__file__).parent
REGISTRIES = ("AGGREGATORS", "PREAGGREGATORS", "ATTACKS")


def registering_modules() -> set[str]:
    """Modules under src/byzlearn whose code calls ``AGGREGATORS/PREAGGREGATORS/ATTACKS.register``."""
    found = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "register"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in REGISTRIES
            ):
                rel = path.relative_to(SRC.parent).with_suffix("")
                found.add(".".join(rel.parts))
                break
    return found


def shipped(registry) -> list:
    """The registry's entries that byzlearn itself registers (tests may register their own helpers)."""
    return [e for e in registry.entries() if getattr(e.factory, "__module__", "").startswith("byzlearn.")]


def listed_modules() -> set[str]:
    return {m.__name__ for m in (*catalogue.RULE_MODULES, *catalogue.OTHER_RULE_MODULES, *catalogue.ATTACK_MODULES)}


def test_every_registering_module_is_in_the_catalogue():
    missing = registering_modules() - listed_modules() - {"byzlearn.attacks.base"}  # base registers "none" itself
    assert not missing, f"modules that register entries but are not in byzlearn.catalogue: {sorted(missing)}"


def test_every_catalogue_module_registers_or_exports_maths():
    for m in listed_modules():
        mod = importlib.import_module(m)
        assert m in registering_modules() or m == "byzlearn.aggregators.distance", m
        if mod in catalogue.RULE_MODULES:  # functional reads their __all__
            assert getattr(mod, "__all__", None), f"{m} has no __all__"


def test_functional_exports_exactly_the_functions_of_the_rule_modules():
    expected = set()
    for mod in catalogue.RULE_MODULES:
        expected |= {n for n in mod.__all__ if inspect.isfunction(getattr(mod, n))}
    assert set(functional.__all__) == expected
    for name in expected:
        assert callable(getattr(functional, name))
    assert {"mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "mda", "nnm", "geometric_median"} <= expected


def test_a_fresh_interpreter_finds_every_name_whatever_it_imports_first():
    """The registries load the catalogue on first look-up: importing only a base module is enough."""
    code = (
        "from byzlearn.aggregators.base import AGGREGATORS, PREAGGREGATORS\n"
        "from byzlearn.attacks.base import ATTACKS\n"
        "print(len(AGGREGATORS.names()), len(PREAGGREGATORS.names()), len(ATTACKS.names()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [len(shipped(AGGREGATORS)), len(shipped(PREAGGREGATORS)), len(shipped(ATTACKS))]


def test_no_family_imports_upwards_to_register():
    """Leaf packages do not import the catalogue, the learned package, the coding package or experiments to register."""
    bad = {
        "aggregators": re.compile(r"^\s*from \.\.(learned|coding|experiments|catalogue)\b|^\s*import byzlearn\.catalogue", re.M),
        "attacks": re.compile(r"^\s*from \.\.(catalogue|experiments)\b", re.M),
        "engine": re.compile(r"^from \.\. import coding\b", re.M),
        "learned": re.compile(r"^\s*from \.\.experiments\b", re.M),
    }
    for package, pattern in bad.items():
        for path in (SRC / package).glob("*.py"):
            if path.name == "functional.py":  # derives its exports from the catalogue's list, registers nothing
                continue
            assert not pattern.search(path.read_text()), f"{path} imports upwards"


SOURCE = re.compile(r"(19|20)\d\d|et al\.|ICML|NeurIPS|NDSS|USENIX|AISTATS|IJCAI|ICDCS|arXiv|ByzFL|Blades|paper", re.I)
UNCITED = {  # entries that are byzlearn's own baselines or crude faults, not a published method
    "mean": "the non-robust baseline",
    "none": "no attack",
    "zero": "a crude fault",
    "nan": "a crude fault",
    "inf": "a crude fault",
    "constant": "a crude fault",
    "dropped": "a crude fault",
    "gaussian": "a crude fault",
    "bit_flip": "a crude fault",
    "clipping": "static clipping, a plain pre-aggregation",
}


@pytest.mark.parametrize("registry", [AGGREGATORS, PREAGGREGATORS, ATTACKS], ids=lambda r: r.kind)
def test_every_entry_is_listed_and_documented_with_its_source(registry):

    for entry in shipped(registry):
        doc = inspect.getdoc(entry.factory) or ""
        assert entry.summary, f"{registry.kind} {entry.name!r} has no docstring"
        if entry.name not in UNCITED:
            module_doc = inspect.getdoc(inspect.getmodule(entry.factory)) or ""
            assert SOURCE.search(doc) or SOURCE.search(module_doc), f"{registry.kind} {entry.name!r}: no source cited"


def test_byzlearn_list_shows_every_entry(capsys):
    from byzlearn.cli import main

    main(["list"])
    out = capsys.readouterr().out
    for registry in (AGGREGATORS, PREAGGREGATORS, ATTACKS):
        for name in (e.name for e in shipped(registry)):
            assert re.search(rf"\b{re.escape(name)}\b", out), f"byzlearn list does not show {registry.kind} {name!r}"

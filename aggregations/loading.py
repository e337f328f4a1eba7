"""Load a project's definitions (a Registry, or FeatureSets and FeatureVectors) from a Python file or module."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from pathlib import Path

from .definitions import FeatureSet, FeatureVector, Registry

FILE_MODULE_PREFIX = "featurestream_definitions_"
_LOADS = itertools.count()


def load_module_file(name: str, path: str):
    """Execute a definitions file as module ``name`` (registered, so its objects pickle by reference)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def loaded_definition_files() -> dict[str, str]:
    """Module name -> file of every definitions file loaded by path, for worker processes to load too."""
    return {
        name: module.__file__
        for name, module in list(sys.modules.items())
        if name.startswith(FILE_MODULE_PREFIX) and getattr(module, "__file__", None)
    }


def load_registry(target: str) -> Registry:
    """``target`` is a path to a .py file or a dotted module name; it must define a Registry or FeatureSets."""
    if target.endswith(".py") or Path(target).is_file():
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"definitions file {target!r} does not exist")
        # A fresh module name per load: objects of an earlier load keep their own module, so they
        # still pickle (by reference) after the file is loaded again.
        name = f"{FILE_MODULE_PREFIX}{abs(hash(str(path.resolve())))}_{next(_LOADS)}"
        module = load_module_file(name, str(path))
    else:
        module = importlib.import_module(target)
    registries = [v for v in vars(module).values() if isinstance(v, Registry)]
    if len(registries) == 1:
        return registries[0]
    if len(registries) > 1:
        raise ValueError(f"definitions {target!r} define {len(registries)} Registry objects; keep one")
    sets = [v for v in vars(module).values() if isinstance(v, FeatureSet)]
    vectors = [v for v in vars(module).values() if isinstance(v, FeatureVector)]
    if not sets:
        raise ValueError(f"definitions {target!r} define no FeatureSet")
    return Registry(sets, vectors)

"""Stand-ins for modules that sentence-transformers and transformers import at start-up although scoring
never uses them, so that a cold ``bge-rerank score`` does not wait for them (issue #15).

They sit in ``sys.modules`` only inside :func:`deferred_imports`; afterwards every import gets the real
module, and what the libraries bound from a stand-in keeps working:

* :class:`_Deferred` (scikit-learn, scipy.sparse, scipy.optimize): a lowercase name taken from it is a
  function that imports the real module on its first call; any other name imports it at once.
* :class:`_DeferredDynamo` (torch._dynamo, the torch.compile front end): transformers applies three of its
  decorators at import time, and torch calls ``disable`` while transformers builds a model on the meta
  device. What they do matters only to Dynamo's own tracing (torch.compile, torch.export), which imports
  the real module first; a post-import hook then applies them for real.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

DYNAMO = "torch._dynamo"

# Imported at start-up for what scoring never calls (import seconds on the machine of bench/startup.py):
# scikit-learn's metrics (sentence_transformers.util.similarity: pairwise_distances), ~3.7 s; scipy.sparse
# (sentence_transformers.util.tensor: coo_matrix, for to_scipy_coo) and scipy.optimize (transformers'
# object-detection losses: linear_sum_assignment), ~0.3 s; torch._dynamo, ~0.5 s beyond what transformers
# imports anyway (see _DeferredDynamo).
DEFERRED = ("sklearn", "sklearn.metrics", "scipy.sparse", "scipy.optimize", DYNAMO)


@contextmanager
def deferred_imports(names: tuple[str, ...] = DEFERRED) -> Iterator[None]:
    """Stand in for ``names`` (those not imported yet) while the block runs; afterwards the stand-ins
    leave ``sys.modules``, so later imports get the real modules."""
    stubs = {name: stub for name in names if name not in sys.modules and (stub := _stand_in(name))}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


def _stand_in(name: str) -> types.ModuleType | None:
    if name != DYNAMO:
        return _Deferred(name)
    torch = importlib.util.find_spec("torch")  # finds, does not import
    path = [os.path.join(p, "_dynamo") for p in (torch and torch.submodule_search_locations) or ()]
    path = [p for p in path if os.path.isdir(p)]
    return _DeferredDynamo(path) if path else None


def _real(name: str) -> Any:
    if isinstance(sys.modules.get(name), (_Deferred, _DeferredDynamo)):
        del sys.modules[name]
    return importlib.import_module(name)


class _Deferred(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        self.__path__: list[str] = []

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if attr.startswith("_"):  # __file__, __version__, ...: probed by inspect and friends; not there
            raise AttributeError(attr)
        if not attr.islower():
            return getattr(_real(name), attr)

        def deferred(*args: Any, **kwargs: Any) -> Any:
            return getattr(_real(name), attr)(*args, **kwargs)

        deferred.__name__ = attr
        return deferred


class _DeferredDynamo(types.ModuleType):
    """torch._dynamo, less its package ``__init__`` (which imports the tracer, Inductor's config,
    torch.distributed's FSDP and sympy): ``assume_constant_result`` and ``allow_in_graph`` return the
    function, as the real ones do, and the real ones are applied to it once torch._dynamo is imported;
    ``disable`` returns a wrapper that calls the function directly until then (Dynamo cannot trace what
    runs before it is even imported) and the real disabled function after. Submodules are the real files
    (transformers' masking utilities import ``_trace_wrapped_higher_order_op``, which needs none of the
    package); any other name imports the real module at once."""

    def __init__(self, path: list[str]) -> None:
        super().__init__(DYNAMO)
        self.__spec__ = importlib.machinery.ModuleSpec(DYNAMO, None, is_package=True)
        self.__spec__.submodule_search_locations = path
        self.__path__ = path
        if _HOOK not in sys.meta_path:
            sys.meta_path.insert(0, _HOOK)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_real(DYNAMO), attr)

    @staticmethod
    def assume_constant_result(fn: Any) -> Any:
        _when_imported(lambda dynamo: dynamo.assume_constant_result(fn))
        return fn

    @staticmethod
    def allow_in_graph(fn: Any) -> Any:
        if not isinstance(fn, types.FunctionType):  # lists of functions and the like: the real thing
            return _real(DYNAMO).allow_in_graph(fn)
        _when_imported(lambda dynamo: dynamo.allow_in_graph(fn))
        return fn

    @staticmethod
    def disable(fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
        if fn is None:  # @disable(recursive=False) and the like
            return functools.partial(_DeferredDynamo.disable, recursive=recursive, **kwargs)
        if _imported is not None or not isinstance(fn, types.FunctionType):  # classes, modules: real
            return _real(DYNAMO).disable(fn, recursive, **kwargs)
        target: list[Callable[..., Any]] = [fn]

        def call(*args: Any, **kw: Any) -> Any:
            return target[0](*args, **kw)

        _when_imported(lambda dynamo: target.__setitem__(0, dynamo.disable(fn, recursive, **kwargs)))
        return functools.wraps(fn)(call) if kwargs.get("wrapping", True) else call


_imported: types.ModuleType | None = None  # the real torch._dynamo, once the hook has seen it imported
_pending: list[Callable[[types.ModuleType], object]] = []


def _when_imported(action: Callable[[types.ModuleType], object]) -> None:
    """Run ``action`` on the real torch._dynamo: now if it is imported, else right after it is."""
    if _imported is not None:
        action(_imported)
    else:
        _pending.append(action)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds the real torch._dynamo with the other finders and has its loader run :func:`_apply` right
    after the package has executed, before anything can trace with it."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != DYNAMO:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if finder is not self and find else None
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenApply(spec.loader)
                return spec
        return None


class _ThenApply(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader  # as if this wrapper had never been there
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _apply(module)

    def __getattr__(self, attr: str) -> Any:  # get_source, get_filename, ...: tracebacks and inspect
        return getattr(self._loader, attr)


def _apply(dynamo: types.ModuleType) -> None:
    global _imported
    _imported = dynamo
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
    prefix = DYNAMO + "."  # submodules imported under the stand-in: attributes of the real package too
    for name, module in list(sys.modules.items()):
        child = name[len(prefix) :]
        if name.startswith(prefix) and "." not in child and child not in vars(dynamo):
            setattr(dynamo, child, module)
    while _pending:
        _pending.pop(0)(dynamo)


_HOOK = _PostImportHook()

"""Model identity: a content hash of what a sampler computes with (weights, parameters, code).

The hash is SHA-256 over a canonical walk of the object: for a ``torch.nn.Module`` every
entry of its ``state_dict`` in order (name, dtype, shape, raw bytes), for a tensor or array
its dtype, shape and bytes, for a function its qualified name, its code (bytecode, constants,
names) and the values it closes over, its defaults and the module globals it names, and for
containers and plain objects their items. Two models with the same configuration but one
weight changed by one ulp hash differently; the same weights loaded twice (in another process,
on another device) hash the same. Nothing is hashed by ``id`` or memory address.

The walk of a Python object stops at :data:`MAX_DEPTH` levels and at objects without
``__dict__`` (only their type's name is hashed); bytecode differs between Python versions,
so a function's hash does too. A hash detects accidents (another checkpoint, an edited
function), not a determined forger.
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Iterator, Mapping

import numpy as np
import torch

MAX_DEPTH = 6
"""Levels of nested Python objects (closures, attributes, globals) the walk descends."""

_Atom = bytes | torch.Tensor | np.ndarray


def _qualname(obj) -> bytes:
    return (
        f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}".encode()
    )


def _atoms(obj, depth: int, seen: set[int]) -> Iterator[_Atom]:
    """The canonical pieces of ``obj``: bytes, and tensors or arrays whose bytes are hashed."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        yield f"{type(obj).__name__}:{obj!r};".encode()
        return
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        yield obj
        return
    if isinstance(obj, (torch.dtype, torch.device, np.dtype)):
        yield f"{type(obj).__name__}:{obj};".encode()
        return
    if depth > MAX_DEPTH or id(obj) in seen:
        yield b"<" + _qualname(type(obj)) + b">"
        return
    seen = seen | {id(obj)}
    if isinstance(obj, torch.nn.Module):
        yield b"module:" + _qualname(type(obj))
        for name, tensor in obj.state_dict().items():
            yield f"[{name}]".encode()
            yield tensor
        return
    if isinstance(obj, Mapping):
        yield b"{"
        for key in sorted(obj, key=repr):
            yield from _atoms(key, depth + 1, seen)
            yield from _atoms(obj[key], depth + 1, seen)
        yield b"}"
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        yield f"{type(obj).__name__}[".encode()
        for item in items:
            yield from _atoms(item, depth + 1, seen)
        yield b"]"
        return
    if isinstance(obj, functools.partial):
        yield b"partial:"
        yield from _atoms((obj.func, obj.args, obj.keywords), depth + 1, seen)
        return
    if isinstance(obj, types.MethodType):
        yield b"method:"
        yield from _atoms((obj.__func__, obj.__self__), depth + 1, seen)
        return
    if isinstance(obj, types.FunctionType):
        yield from _function_atoms(obj, depth, seen)
        return
    if isinstance(obj, types.CodeType):
        yield from _code_atoms(obj, depth, seen)
        return
    if isinstance(obj, types.ModuleType):
        yield b"import:" + obj.__name__.encode()
        return
    if isinstance(obj, (type, types.BuiltinFunctionType)):
        yield b"ref:" + _qualname(obj)
        return
    yield b"object:" + _qualname(type(obj))
    call = next((vars(k)["__call__"] for k in type(obj).__mro__ if "__call__" in vars(k)), None)
    if isinstance(call, types.FunctionType):
        yield from _function_atoms(call, depth + 1, seen)
    if hasattr(obj, "__dict__"):
        yield from _atoms(dict(vars(obj)), depth + 1, seen)


def _code_atoms(code: types.CodeType, depth: int, seen: set[int]) -> Iterator[_Atom]:
    yield b"code:" + code.co_qualname.encode() + code.co_code
    yield from _atoms(code.co_names, depth + 1, seen)
    yield from _atoms(code.co_consts, depth + 1, seen)


def _function_atoms(fn: types.FunctionType, depth: int, seen: set[int]) -> Iterator[_Atom]:
    yield b"function:" + _qualname(fn)
    yield from _code_atoms(fn.__code__, depth, seen)
    yield from _atoms((fn.__defaults__, fn.__kwdefaults__), depth + 1, seen)
    cells = tuple(_cell_contents(cell) for cell in fn.__closure__ or ())
    yield from _atoms(cells, depth + 1, seen)
    named = {name: fn.__globals__[name] for name in _global_names(fn.__code__) if name in fn.__globals__}
    yield from _atoms(named, depth + 1, seen)


def _cell_contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return "<empty cell>"


def _global_names(code: types.CodeType) -> list[str]:
    """Names a code object (and the code nested in it) may read as globals."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return sorted(set(names))


def _tensor_bytes(tensor: torch.Tensor | np.ndarray) -> tuple[bytes, bytes]:
    """``(header, data)``: dtype and shape, and the raw bytes in C order (on the CPU)."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach()
        header = f"tensor:{tensor.dtype}:{tuple(tensor.shape)};".encode()
        cpu = tensor.cpu().contiguous().reshape(-1)  # bfloat16 has no numpy dtype: read its bytes
        data = cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b""
        return header, data
    array = np.ascontiguousarray(tensor)
    return f"array:{array.dtype.str}:{array.shape};".encode(), array.tobytes()


def _version(tensor: torch.Tensor | np.ndarray):
    """What changes when a tensor's values may have changed (its storage or in-place version)."""
    if isinstance(tensor, torch.Tensor):
        return (tensor.data_ptr(), tensor._version, tuple(tensor.shape), tensor.dtype, tensor.device)
    return hashlib.sha256(b"".join(_tensor_bytes(tensor))).digest()


def content_sha256(obj) -> str:
    """Hex SHA-256 of ``obj``'s canonical content (see the module docstring)."""
    return _hash(list(_atoms(obj, 0, set())))


def _hash(atoms: list[_Atom]) -> str:
    digest = hashlib.sha256()
    for atom in atoms:
        if isinstance(atom, bytes):
            digest.update(atom)
        else:
            for part in _tensor_bytes(atom):
                digest.update(part)
    return digest.hexdigest()


def public_config(config: Mapping) -> dict:
    """A diffusers configuration without its private entries (``_class_name``, ``_diffusers_version``)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


class IdentityCache:
    """:func:`content_sha256` of one object, recomputed only when a tensor in it changed.

    The walk without hashing bytes is cheap; the key is every tensor's storage pointer and
    in-place version counter (``optimizer.step()``, ``load_state_dict`` and ``copy_`` bump
    it) together with every other piece of the walk.
    """

    def __init__(self):
        self._key = None
        self._digest = ""

    def sha256(self, obj) -> str:
        atoms = list(_atoms(obj, 0, set()))
        key = tuple(a if isinstance(a, bytes) else _version(a) for a in atoms)
        if key != self._key:
            self._key, self._digest = key, _hash(atoms)
        return self._digest

"""Load the kernels' compiled code from Numba's on-disk cache without Numba's compiler.

Why: a Numba dispatcher that finds its cache entry still initialises Numba's typing and
lowering registries first (about 0.3 s of CPU in each process), parses each entry's LLVM
bitcode again and imports the modules of every environment it references (about 0.2 s more
for the kernels here). Ranks sharing a node's cores pay that once each: four ranks on two
cores took 2.3-2.9 s from import to kernels ready. The object code in the cache loads in
milliseconds (about 0.07 s per process in all, most of it Numba's runtime set-up).

:func:`load` reads the cache entries Numba wrote for the :data:`ENTRY_POINTS` (checked with
Numba's own index key: source file stamp, bytecode hash, CPU and Numba version), loads their
object code into one llvmlite MCJIT engine (as Numba loads its own), and installs each
compiled function in its dispatcher's table: calls run exactly the code Numba compiled,
through Numba's usual type dispatch. Nothing is compiled. It relies on Numba internals (the
cache files' layout, ``Dispatcher._insert``, ``_dynfunc.make_function``), which is why the
cache key includes Numba's version and every surprise falls back: anything unexpected (an
entry missing, a Numba release whose cache internals differ, an undefined symbol this
process cannot resolve, an object format other than ELF) makes :func:`load` return False,
and the caller takes Numba's ordinary path, which compiles or loads and (re)writes the
cache. ``CNNMM_FASTLOAD=0`` turns it off.
"""

import os
import pickle
import struct

import numpy as np

__all__ = ["ENTRY_POINTS", "enabled", "load", "installed"]

#: The jitted functions the drivers call from Python, by module; the others run only inside
#: these (Numba links callees into their caller's object code).
ENTRY_POINTS = {
    "im2col": ("im2col", "col2im"),
    "wide": ("pack_wide", "unpack_wide"),
    "direct": ("pack_slab", "pack_cols", "stripes", "unblock", "pack_dyt", "weight_tiles", "store_weight"),
    "klanes": ("tiles", "store"),
    "pointwise": ("pack_filter", "column_blocks", "weight_tiles"),
}

_loaded = {}


def enabled(environ=os.environ):
    """Whether :func:`load` may be used (``CNNMM_FASTLOAD`` is not ``0``)."""
    return environ.get("CNNMM_FASTLOAD", "1") != "0"


def load(dtype):
    """Install every entry point's cached code for ``dtype``; True on success.

    On False nothing was installed and the dispatchers compile (or load their cache) as usual.
    Repeated calls for a loaded dtype return True at once.
    """
    dtype = np.dtype(dtype)
    if dtype in _loaded:
        return True
    if not enabled():
        return False
    try:
        found = _cache_entries(dtype)
        installs = _link(found) if found else None
    except Exception:  # noqa: BLE001 - any surprise in Numba's internals: take the ordinary path
        installs = None
    if not installs:
        return False
    for disp, args, entry in installs:
        disp._insert([a._code for a in args], entry, False)
    # The dispatcher keeps only the types' codes; a type's code lives as long as the type.
    _loaded[dtype] = installs
    return True


def installed(dtype):
    """The dispatchers whose ``dtype`` code :func:`load` installed (empty if it did not)."""
    return tuple(disp for disp, _, _ in _loaded.get(np.dtype(dtype), ()))


def _dispatchers():
    from importlib import import_module
    for module, names in ENTRY_POINTS.items():
        mod = import_module(f"{__package__}.{module}")
        for name in names:
            yield getattr(mod, name)


def _matches(args, dtype):
    """Whether the argument types ``args`` are the ``dtype`` variant: every floating array of
    that dtype, and at least one."""
    floats = [str(t.dtype) for t in args if hasattr(t, "ndim") and str(t.dtype).startswith("float")]
    return bool(floats) and all(name == dtype.name for name in floats)


def _cache_entries(dtype):
    """``[(dispatcher, cache data)]`` for every valid entry of ``dtype``; None when an entry
    point has none."""
    from numba.core.registry import cpu_target
    from numba.core.runtime import nrt

    ctx = cpu_target.target_context
    nrt.rtsys.initialize(ctx)  # registers the runtime's symbols (NRT_*) the objects link to
    codegen = ctx.codegen()
    found = []
    for disp in _dispatchers():
        cache = disp._cache
        files = cache._cache_file
        before = len(found)
        for key, data_name in files._load_index().items():
            args = key[0]
            if _matches(args, dtype) and key == cache._index_key(args, codegen):
                with open(files._data_path(data_name), "rb") as f:
                    found.append((disp, _Unpickler(f).load()))
        if len(found) == before:
            return None
    return found


class _Unpickler(pickle.Unpickler):
    """Numba's cache-entry unpickler, except that an environment of a module not imported
    yet gets an empty namespace instead of importing the module (Numba's own helpers, such
    as ``numba.np.arrayobj``: 0.08 s). Compiled nopython code reads only an environment's
    constants, which are kept; the namespace serves object mode, which nothing here uses."""

    def find_class(self, module, name):
        if (module, name) == ("numba.core.environment", "_rebuild_env"):
            return _rebuild_env
        return super().find_class(module, name)


def _rebuild_env(modname, consts, env_name):
    import sys

    from numba.core import environment
    env = environment.lookup_environment(env_name)
    if env is not None:
        return env
    module = sys.modules.get(modname)
    env = environment.Environment(module.__dict__ if module is not None else {"__name__": modname})
    env.consts[:] = consts
    env.env_name = env_name
    if module is not None:  # Numba's later loads may share a complete one, not an empty one
        environment.Environment._memo[env_name] = env
    return env


def _link(found):
    """``[(dispatcher, argument types, entry function)]`` for the cache entries ``found``,
    their object code loaded into one engine (as Numba loads its own); None if one cannot be."""
    import ctypes

    import llvmlite.binding as ll
    from numba import _dynfunc
    from numba.core.registry import cpu_target

    engine = ll.create_mcjit_compiler(ll.parse_assembly(""), cpu_target.target_context.codegen()._tm)
    for _, data in found:
        (_, kind, payload), objectmode, reload_init = data[0], data[4], data[7]
        if kind != "object" or objectmode or reload_init:
            return None
        undefined = _undefined_symbols(payload[0])
        if undefined is None or any(ll.address_of_symbol(name) is None for name in undefined):
            return None  # MCJIT would abort the process on an unresolved symbol
        engine.add_object_file(ll.ObjectFileRef.from_data(payload[0]))
    engine.finalize_object()
    installs = []
    for disp, (_, fndesc, env, signature, _, _, _, _, referenced_envs) in found:
        address = engine.get_function_address(fndesc.llvm_cpython_wrapper_name)
        if not address:
            return None
        for e in (env, *referenced_envs):
            slot = engine.get_global_value_address(e.env_name)
            if slot:
                # Compiled code reads its environment through this global (as Numba's set_env).
                ctypes.c_void_p.from_address(slot).value = id(e)
        entry = _dynfunc.make_function(fndesc.lookup_module(), fndesc.qualname.split(".")[-1],
                                       f"compiled wrapper for {fndesc.qualname!r}", address, env,
                                       (engine, tuple(referenced_envs)))
        installs.append((disp, tuple(signature.args), entry))
    return installs


def _undefined_symbols(blob):
    """Names of the undefined symbols of an ELF64 little-endian object, or None for any other
    format (then :func:`load` does not use it)."""
    if blob[:6] != b"\x7fELF\x02\x01":
        return None
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", blob, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            st_name, _, _, st_shndx = struct.unpack_from("<IBBH", blob, pos)
            if st_shndx == 0 and st_name:
                end = blob.index(b"\0", strtab + st_name)
                names.add(blob[strtab + st_name:end].decode())
    return names

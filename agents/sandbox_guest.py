"""The MicroPython program that runs inside the sandbox (the guest side of the bridge).

It is passed as ``micropython -c BOOTSTRAP`` and never returns until the host says
``close``: it reports the previous snippet's outcome and fetches the next snippet with
one blocking host call (``__done__``), so globals survive between snippets like a
notebook. Everything the user code may clobber (json, exec, print, ...) is bound to
private names first, so a snippet can break only its own namespace.

Output: wasmtime calls Python stdout callbacks on its own tokio threads (~46 us per
write, and the process sometimes panics at exit), so ``print`` is replaced by the native
print into an ``io.StringIO`` flushed in 8 KiB chunks through the ``__io__`` host call
(~11k fuel per printed line instead of ~49k for a pure-Python print). Direct
``sys.stdout.write`` goes to WASI ``fd_write``, which the host captures itself.

The artifact's GC is fragile: with a try/except active in the bootstrap frame that
blocks in ``__done__``, the next collection corrupted the heap (bisected: payloads
overwritten with pointers, SyntaxError in the next snippet, out-of-bounds traps). The
loop therefore has no exception handler in its own frame, the running snippet is
pinned from globals, and results are fetched into small buffers. A corrupted guest
still only traps (the session is reset); the host is never affected.
"""

from __future__ import annotations

import json

# Flushing in 8 KiB chunks keeps a million-line print at ~1k host calls.
_FLUSH_CHARS = 8192

_BOOTSTRAP = r"""
import host as _h, json as _j, sys as _s, io as _io, builtins as _b
_call = _h.call
_dumps = _j.dumps
_loads = _j.loads
_exec = exec
_compile = compile
_repr = repr
_str = str
_len = len
_type = type
_BaseExc = BaseException
_pexc = _s.print_exception
_rout = _s.stdout
_rerr = _s.stderr
_np = print
_CFG = _loads(__CFG__)


def _xcall(name, payload):
    # Results larger than the small default buffer are fetched in a second call sized
    # for them, so the guest never allocates a max-size buffer per call.
    try:
        return _call(name, payload)
    except ValueError:
        return _call('__take__', '')

try:
    import random as _rnd
except OSError:
    # random seeds itself from /dev/urandom, which does not exist here; the retry works.
    import random as _rnd
_rnd.seed(_CFG['seed'])


class HostError(Exception):
    pass


class HostLimitError(HostError):
    pass


def _hcall(name, args, kwargs):
    try:
        payload = _dumps([args, kwargs])
    except (TypeError, ValueError) as e:
        raise HostError(name + '(): arguments must be JSON values (str, int, float, bool, None, list, dict): ' + _str(e))
    try:
        raw = _xcall(name, payload)
    except ValueError as e:
        raise HostLimitError(name + '(): result too large for one host call: ' + _str(e))
    r = _loads(raw)
    if 'e' in r:
        raise (HostLimitError if r.get('l') else HostError)(r['e'])
    return r.get('v')


class _Buf:
    def __init__(self, tag):
        self.tag = tag
        self.s = _io.StringIO()

    def flush(self):
        global _so, _sot
        s = self.s
        if s.tell():
            self.s = _io.StringIO()
            _call('__io__', self.tag + s.getvalue())

        if self is _out:
            _so = self.s
            _sot = _so.tell


_out = _Buf('1')
_err = _Buf('2')
_so = _out.s
_sot = _so.tell


def print(*args, **kw):
    if kw:
        kw.pop('flush', None)
        f = kw.get('file')
        if f is None or f is _rout:
            b = _out
        elif f is _rerr:
            b = _err
        else:
            return _np(*args, **kw)
        kw['file'] = b.s
        _np(*args, **kw)
        if b.s.tell() > __FLUSH__:
            b.flush()
        return
    # The hot path (a bare print): cached stream and tell, no attribute lookups.
    _np(*args, file=_so)
    if _sot() > __FLUSH__:
        _out.flush()


_b.print = print


def _mk(name):
    def f(*args, **kwargs):
        return _hcall(name, args, kwargs)
    return f


_G = {'__name__': '__main__', 'HostError': HostError, 'HostLimitError': HostLimitError, 'print': print}
for _n in _CFG['names']:
    _G[_n] = _mk(_n)


_pin = [None]


def _run(m):
    r = {}
    try:
        # Keep the compiled snippet reachable from globals while it runs.
        _pin[0] = _compile(m['code'], '<snippet>', 'exec')
        _exec(_pin[0], _G)
        if '_loopbus_result_' in _G:
            v = _G.pop('_loopbus_result_')
            if v is not None:
                t = _repr(v)
                if _len(t) > _CFG['repr_limit']:
                    t = t[:_CFG['repr_limit']] + '...'
                r['r'] = t
    except _BaseExc as e:
        _G.pop('_loopbus_result_', None)
        try:
            buf = _io.StringIO()
            _pexc(e, buf)
            r = {'e': buf.getvalue(), 't': _type(e).__name__}
        except _BaseExc:
            r = _OOM
    _pin[0] = None
    try:
        _out.flush()
        _err.flush()
    except _BaseExc:
        pass
    return r


_OOM = {'e': 'MemoryError: out of memory while reporting an error; free some memory (del big objects)\n', 't': 'MemoryError'}
_OOM_JSON = _dumps(_OOM)


def _encode(report):
    try:
        return _dumps(report)
    except _BaseExc:
        return _OOM_JSON


def _main():
    # A function, not module-level code, so the loop's own bytecode is reachable from
    # globals. No try/except in this frame: with an exception handler active in the frame
    # that blocks in __done__, a later GC was observed to corrupt the heap (see docstring).
    report = {'ready': 1}
    while True:
        m = _loads(_xcall('__done__', _encode(report)))
        if m.get('op') == 'close':
            return
        report = _run(m)


_main()
"""


def bootstrap_source(names: list[str], *, seed: int, repr_limit: int, heap: int) -> str:
    """The guest program, with the host-function names and settings baked in."""
    cfg = json.dumps({"names": names, "seed": seed, "repr_limit": repr_limit, "heap": heap})
    return _BOOTSTRAP.replace("__CFG__", repr(cfg)).replace("__FLUSH__", str(_FLUSH_CHARS))

"""The MicroPython program that runs inside the sandbox (the guest side of the bridge).

It is passed as ``micropython -c BOOTSTRAP`` and never returns until the host says
``close``: it reports the previous snippet's outcome and fetches the next snippet with
one blocking host call (``__done__``), so globals survive between snippets like a
notebook. Everything the user code may clobber (json, exec, print, ...) is bound to
private names first, so a snippet can break only its own namespace.

Protocol privacy (issue 14). Snippets can reach this program's globals (``import
__main__``, ``print.__globals__``) and call ``host.call`` themselves, so the reserved host
names (``__done__``, ``__take__``, ``__o1__``, ``__o2__``) carry a per-session key that the
host hands out once, as the answer to the session's first host call (``__hello__``, made
here before any snippet runs). The key and everything that reports a snippet live only in
closures and in the runner generator's locals, which MicroPython gives no access to
(no ``__closure__``, no frames); ``uctypes``, ``machine`` (raw memory) and ``builtins`` (to
undo the guard) cannot be imported. Patching the globals breaks only the snippet's own
printing and host calls, never the report or the protocol.

GC safety (why the code below is shaped this way). In this MicroPython build a
function call whose frame state (locals + value stack + 3 words per try block) exceeds
11 words gets that state from the GC heap, and the only pointer to it lives in wasm
locals, which the collector cannot see: a collection while such a frame is active frees
its state, and the frame then reads freed, reused memory (bisected: a million-line print
trapped with "memory out of bounds" when the first collection ran near its end, in this
bootstrap's old snippet-running frame). ``sandbox_runtime.patch_frame_state`` fixes that
in the artifact (every frame state on the scanned stack). Defence in depth, for an
artifact the patch does not recognise: every bootstrap function that can be active while
the guest allocates is kept small (few locals, no ``as``, at most one ``try``), and the
frame that needs more (running a snippet and reporting it) is a generator held in a
global, whose state lives in the (rooted) generator object.

Output: wasmtime calls Python stdout callbacks on its own tokio threads (~46 us per
write, and the process sometimes panics at exit), so ``print`` is replaced by the native
print into an ``io.StringIO`` flushed in 8 KiB chunks through the ``__o1__``/``__o2__``
host calls (~11k fuel per printed line instead of ~49k for a pure-Python print). Once the
host answers that a stream's cap is reached, the guest stops sending: each full chunk is
only counted and the same buffer rewound (``seek(0)``), so a flood of output allocates
nothing more, in the guest or the host; the count is reported with the snippet's result
for the truncation marker. Direct ``sys.stdout.write`` goes to WASI ``fd_write``, which
the host captures (and caps) itself.
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
_SIO = _io.StringIO
_BaseExc = BaseException
_JErr = (TypeError, ValueError)
_pexc = _s.print_exception
_rout = _s.stdout
_rerr = _s.stderr
_np = print
_CFG = _loads(__CFG__)


def _mkx(take):
    # Results larger than the small default buffer are fetched in a second call sized
    # for them, so the guest never allocates a max-size buffer per call.
    call = _call

    def xcall(n, p):
        try:
            return call(n, p)
        except ValueError:
            pass
        return call(take, '')
    return xcall


def _seed():
    try:
        import random
    except OSError:
        # random seeds itself from /dev/urandom, which does not exist here; the retry works.
        pass
    import random
    random.seed(_CFG['seed'])


_seed()


class HostError(Exception):
    pass


class HostLimitError(HostError):
    pass


def _enc(p):
    try:
        return _dumps(p)
    except _JErr:
        pass


def _herr(r):
    raise (HostLimitError if r.get('l') else HostError)(r['e'])


def _hcall(n, a, k):
    p = _enc([a, k])
    if p is None:
        raise HostError(n + '(): arguments must be JSON values (str, int, float, bool, None, list, dict)')
    r = _loads(_xcall(n, p))
    if 'e' in r:
        _herr(r)
    return r.get('v')


# Output streams: buffer, its tell, cap reached (host said so), bytes dropped after that.
_so = _SIO()
_sot = _so.tell
_se = _SIO()
_set = _se.tell
_f1 = _f2 = False
_d1 = _d2 = 0


def _mkout(k):
    call = _call
    n1 = '__o1__' + k
    n2 = '__o2__' + k

    def fl1():
        global _so, _sot, _f1, _d1
        if _f1:
            _d1 += _sot()
            _so.seek(0)
            return
        v = _so.getvalue()
        _so = _SIO()
        _sot = _so.tell
        _f1 = bool(call(n1, v))

    def fl2():
        global _se, _set, _f2, _d2
        if _f2:
            _d2 += _set()
            _se.seek(0)
            return
        v = _se.getvalue()
        _se = _SIO()
        _set = _se.tell
        _f2 = bool(call(n2, v))
    return fl1, fl2


def _reset_out():
    global _so, _sot, _se, _set, _f1, _f2, _d1, _d2
    _so = _SIO()
    _sot = _so.tell
    _se = _SIO()
    _set = _se.tell
    _f1 = _f2 = False
    _d1 = _d2 = 0


def _pn(a, s, e, w):
    # print's formatting without a star call: ``_np(*a, ...)`` copies the arguments into a
    # heap array that only wasm locals point to, and a collection during an argument's
    # __str__ freed it under the native print (bisected: the next argument printed as 0).
    i = 0
    n = _len(a)
    while i < n:
        if i:
            w(s)
        w(_str(a[i]))
        i += 1
    w(e)


def _pk(a, k):
    f = k.get('file')
    if f is None or f is _rout:
        b = 1
    elif f is _rerr:
        b = 2
    else:
        k.pop('flush', None)
        return _np(*a, **k)
    s = k.get('sep')
    e = k.get('end')
    _pn(a, ' ' if s is None else s, '\n' if e is None else e, (_so if b == 1 else _se).write)
    if b == 1:
        if _sot() > __FLUSH__:
            _fl1()
    elif _set() > __FLUSH__:
        _fl2()


def print(*a, **k):
    if k:
        return _pk(a, k)
    # The hot path (a bare print): cached stream and tell, no attribute lookups. One
    # argument goes straight to the native print (see _pn for why not ``_np(*a)``).
    if _len(a) == 1:
        _np(a[0], file=_so)
    else:
        _pn(a, ' ', '\n', _so.write)
    if _sot() > __FLUSH__:
        _fl1()


_b.print = print


def _mk(name):
    def f(*args, **kwargs):
        return _hcall(name, args, kwargs)
    return f


_G = {'__name__': '__main__', 'HostError': HostError, 'HostLimitError': HostLimitError, 'print': print}
for _n in _CFG['names']:
    _G[_n] = _mk(_n)
_OOM = {'e': 'MemoryError: out of memory while reporting an error; free some memory (del big objects)\n', 't': 'MemoryError'}
_OOM_JSON = _dumps(_OOM)


def _runner(k, xcall, fl1, fl2):
    # A generator: its (large) frame state lives in the generator object, rooted from
    # the global _RUN, so a collection while the snippet runs cannot free it.
    # The protocol is private to it: the session key (which makes the host accept the
    # reserved names) and every function that reports a snippet are locals bound before
    # any snippet runs. Snippets reach this module's globals (print.__globals__, import
    # __main__) but no generator's locals, and a running generator refuses send().
    loads = _loads
    dumps = _dumps
    exec_ = _exec
    compile_ = _compile
    repr_ = _repr
    len_ = _len
    type_ = _type
    sio = _SIO
    pexc = _pexc
    reset = _reset_out
    g = _G
    limit = _CFG['repr_limit']
    oom = _OOM
    oom_json = _OOM_JSON
    bexc = _BaseExc
    done = '__done__' + k
    k = None
    rep = '{"ready":1}'
    while True:
        m = loads(xcall(done, rep))
        if m.get('op') == 'close':
            yield  # back to _main, which ends the program
        code = m['code']
        m = None
        reset()
        r = {}
        try:
            exec_(compile_(code, '<snippet>', 'exec'), g)
            if '_loopbus_result_' in g:
                v = g.pop('_loopbus_result_')
                if v is not None:
                    t = repr_(v)
                    if len_(t) > limit:
                        t = t[:limit] + '...'
                    r['r'] = t
        except bexc as e:
            g.pop('_loopbus_result_', None)
            try:
                buf = sio()
                pexc(e, buf)
                r = {'e': buf.getvalue(), 't': type_(e).__name__}
                buf = None
            except bexc:
                r = oom
            e = None
        v = t = code = None
        try:
            fl1()
            fl2()
        except bexc:
            pass
        if _d1:
            r['d1'] = _d1
        if _d2:
            r['d2'] = _d2
        try:
            rep = dumps(r)
        except bexc:
            rep = oom_json
        r = None


def _mkimp(imp):
    # Raw memory access (uctypes, machine.mem*) would read the protocol's private state
    # out of linear memory; builtins would let a snippet drop this guard. Compared
    # without leading u's: MicroPython also finds a module under its u-prefixed name.
    deny = ('ctypes', 'machine', 'builtins')

    def __import__(name, *a):
        if name.lstrip('u') in deny:
            raise ImportError("no module named '" + name + "'")
        return imp(name, *a)
    return __import__


def _setup(k):
    # k: the session key, the host's answer to the first host call of the session (it
    # answers __hello__ only then, before any snippet runs); kept only in closures.
    global _xcall, _fl1, _fl2, _RUN
    _xcall = _mkx('__take__' + k)
    _fl1, _fl2 = _mkout(k)
    _RUN = _runner(k, _xcall, _fl1, _fl2)


_setup(_call('__hello__', ''))
_b.__import__ = _mkimp(__import__)
del _b


def _main():
    # Small frame on purpose (see the module docstring): one call, no locals, no try.
    _RUN.send(None)


_main()
"""


def bootstrap_source(names: list[str], *, seed: int, repr_limit: int, heap: int) -> str:
    """The guest program, with the host-function names and settings baked in."""
    cfg = json.dumps({"names": names, "seed": seed, "repr_limit": repr_limit, "heap": heap})
    return _BOOTSTRAP.replace("__CFG__", repr(cfg)).replace("__FLUSH__", str(_FLUSH_CHARS))

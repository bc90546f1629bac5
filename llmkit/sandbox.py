"""The sandbox templates run in, and the budgets it enforces on every render.

A template is code that a caller's variables drive, so every render is bounded by the `Limits`
of llmkit.yaml (see `render` for what an error looks like):
- Output is counted chunk by chunk while the template produces it (in `render`).
- Nothing a template builds may be larger than `render_output_chars`: `*`, `**`, `+` and `%`,
  the string methods and filters that widen text (`ljust`, `center`, `zfill`, `replace`,
  `join`, `format`, `indent`, `wordwrap`, `batch`, ...) refuse a result over the budget
  *before* computing it, and every value a call, filter, `~` or block returns is checked after.
  Nothing is folded at compile time (the optimizer is off), so no template expression runs
  outside a render.
- `range()` yields at most `render_range` items, and macros nest at most MAX_MACRO_DEPTH deep.
- CPU time is the backstop for work that calls no hook at all, such as nested loops over a
  caller's list. A watchdog thread interrupts a render that has used more than `render_cpu_ms`
  of its thread's CPU time by raising an exception into that thread
  (`PyThreadState_SetAsyncExc`). A late exception can never surface outside the render that
  earned it: the watchdog fires only while the render runs (decided under the watchdog's lock,
  which the render takes to end), the exception is a BaseException that only the render's guard
  catches, and the guard withdraws one still pending before it returns. The exception can land
  in code that swallows it (a finalizer that the garbage collector runs in that thread prints it
  and goes on), so the watchdog fires again each time the render has used another
  REFIRE_AFTER_CPU_S: far more than the guard needs from catching it to ending the render.

What a hook cannot bound is a single C call on a large input it did not build (sorting or
wrapping a caller's megabyte); those are bounded by the request body size, and take a few
hundred milliseconds at most.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from types import TracebackType
from typing import Any, TypeVar

from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.runtime import Macro
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup

from llmkit.budgets import DEFAULT_LIMITS, Limits

MAX_MACRO_DEPTH = 64
# Integers a template may build with `*` and `**`; Python will not even print one over 4,300
# digits (about 14,000 bits), and multiplying huge ones holds the GIL for seconds.
MAX_INT_BITS = 1 << 16
# How often the watchdog looks while renders run: a render may overrun its budget by about
# this much. Each look takes the GIL from whichever thread holds it, which costs the gateway
# measurably at 50 looks a second.
WATCHDOG_POLL_S = 0.1
WATCHDOG_IDLE_AFTER_S = 2.0
REFIRE_AFTER_CPU_S = 0.1
T = TypeVar("T")


# -- one render under way --------------------------------------------------------------------


class OverBudget(BaseException):
    """A render would exceed a budget. A BaseException, so that no `except Exception` inside
    Jinja or a filter can swallow it; only the render's guard catches it."""

    def __init__(self, limit: str, detail: str, tb: TracebackType | None = None) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail
        self.tb = tb  # where an interrupted render was, for the error's line


class _Interrupted(BaseException):
    """What the watchdog raises into a render that used up its CPU time."""


class RenderState:
    """One render under way: its limits, what it has used so far, the variables it found
    missing, and its state as the watchdog sees it (changed under the watchdog's lock)."""

    __slots__ = (
        "chars",
        "clock",
        "fired_at",
        "limits",
        "macro_depth",
        "missing",
        "missing_attributes",
        "running",
        "started_cpu",
        "started_wall",
        "thread_id",
    )

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.chars = 0
        self.macro_depth = 0
        self.missing: set[str] = set()
        # (object, attribute) read but absent, named by their dotted path once the render ends.
        self.missing_attributes: dict[tuple[int, str], tuple[object, str]] = {}
        self.running = False
        self.thread_id = 0
        self.clock: int | None = None  # the rendering thread's CPU clock, for the watchdog
        self.started_cpu = 0.0
        self.started_wall = 0.0
        self.fired_at: float | None = None  # the thread's CPU clock when last interrupted

    def begin(self) -> None:
        """Called by the rendering thread as the render starts."""
        self.thread_id = threading.get_ident()
        self.started_cpu = time.thread_time()
        self.started_wall = time.monotonic()

    def cpu_now(self) -> float:
        """The rendering thread's CPU time, read from the watchdog's thread (wall time where
        threads have no CPU clock)."""
        if self.clock is None:
            try:
                self.clock = time.pthread_getcpuclockid(self.thread_id)
            except (AttributeError, OSError):
                self.clock = -1
        return time.monotonic() if self.clock == -1 else time.clock_gettime(self.clock)

    def due(self) -> bool:
        """Whether the watchdog should interrupt the render now: it has used more CPU time
        than its budget and has not been interrupted, or it has gone on for REFIRE_AFTER_CPU_S
        of CPU time since it was."""
        budget_s = self.limits.render_cpu_ms / 1000
        if self.fired_at is None and time.monotonic() - self.started_wall <= budget_s:
            return False  # a thread's CPU time never runs ahead of wall time
        now = self.cpu_now()
        if self.fired_at is not None:
            return now - self.fired_at > REFIRE_AFTER_CPU_S
        started = self.started_wall if self.clock == -1 else self.started_cpu
        return now - started > budget_s


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
current_render: ContextVar[RenderState | None] = ContextVar("llmkit_render", default=None)


def guarded(render: RenderState, work: Callable[[], T]) -> T:
    """Run `work` as `render`, under the watchdog."""
    try:
        try:
            _watchdog.start(render)
            return work()
        finally:
            _watchdog.stop(render)
    except _Interrupted as exc:
        # First of all (the watchdog fires again only after REFIRE_AFTER_CPU_S more CPU time):
        # the interruption may have cut the stop above short.
        _watchdog.stop(render)
        raise OverBudget(
            "render_cpu_ms",
            f"more than {render.limits.render_cpu_ms} ms of CPU time",
            exc.__traceback__,
        ) from None


class _Watchdog:
    """One daemon thread that looks at the renders under way every WATCHDOG_POLL_S, and waits
    (waking no one) once there has been none for WATCHDOG_IDLE_AFTER_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._renders: set[RenderState] = set()
        self._thread: threading.Thread | None = None
        self._idle = False
        self._starts = 0  # renders started so far: how the watchdog tells a quiet spell

    def start(self, render: RenderState) -> None:
        """Called by the rendering thread as the render begins."""
        render.begin()
        with self._lock:
            render.running = True
            self._renders.add(render)
            self._starts += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llmkit-render-watchdog", daemon=True
                )
                self._thread.start()
            elif self._idle:
                self._cond.notify()

    def stop(self, render: RenderState) -> None:
        """Called by the rendering thread as the render ends; after it, the watchdog never
        fires at this render, and nothing it fired is still pending."""
        with self._lock:
            render.running = False
            self._renders.discard(render)
        if render.fired_at is not None:
            # Fired just before the render ended and not delivered yet: withdraw it (from the
            # thread it was fired at, so it cannot be delivered meanwhile).
            _set_async_exc(ctypes.c_ulong(render.thread_id), None)

    def _run(self) -> None:
        seen_starts = -1
        quiet_since: float | None = None
        while True:
            with self._lock:
                for render in self._renders:
                    self._interrupt_if_over(render)
                # Renders are far shorter than a look apart: a quiet spell is one in which none
                # started, not one in which the looks found none running.
                if self._renders or self._starts != seen_starts:
                    seen_starts, quiet_since = self._starts, None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > WATCHDOG_IDLE_AFTER_S:
                    # Waiting only after a quiet spell: under steady traffic no render has to
                    # wake the watchdog (a thread wake-up per request, measured in the gateway).
                    self._idle = True
                    while self._starts == seen_starts:
                        self._cond.wait()
                    self._idle = False
                    seen_starts, quiet_since = self._starts, None
            time.sleep(WATCHDOG_POLL_S)

    @staticmethod
    def _interrupt_if_over(render: RenderState) -> None:
        # Under the lock: a render is interrupted only while it runs. Firing again replaces an
        # exception still pending, so there is never more than one.
        if not render.running:
            return
        try:
            due = render.due()
        except OSError:  # the thread's clock is gone: so is the render
            return
        if due:
            render.fired_at = render.cpu_now()
            _set_async_exc(ctypes.c_ulong(render.thread_id), ctypes.py_object(_Interrupted))

    def reset_after_fork(self) -> None:
        # A forked child has none of the parent's threads.
        self.__init__()  # type: ignore[misc]


_watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watchdog.reset_after_fork)


# -- the checks the sandbox's hooks run ------------------------------------------------------


def _limits() -> Limits:
    render = current_render.get()
    return render.limits if render is not None else DEFAULT_LIMITS


def _refuse_size(size: int, what: str) -> None:
    cap = _limits().render_output_chars
    if size > cap:
        raise OverBudget(
            "render_output_chars", f"{what} would be {size:,} long, over {cap:,} characters"
        )


_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def _checked(value: T) -> T:
    """`value`, unless it is larger than the output budget."""
    if isinstance(value, _SIZED):
        _refuse_size(len(value), f"a {type(value).__name__}")
    return value


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int):
        _refuse_size(width, what)


def _big_number(digits: str) -> int:
    # int() refuses more than 4,300 digits; anything that long is over every budget anyway.
    return int(digits) if len(digits) <= 20 else 10**20


def _check_percent_format(fmt: str, args: Any) -> None:
    """`fmt % args`: a width or precision (`%300000000d`, `%.*f`) over the output budget."""
    if "%" not in fmt:
        return
    values = list(args) if isinstance(args, tuple) else [args]
    taken = 0
    for match in _PERCENT_RE.finditer(fmt):
        for number in match.group(1, 2):
            if number == "*":
                value = values[taken] if taken < len(values) else 0
                taken += 1
                _check_width(value, "a formatted field")
            elif number:
                _refuse_size(_big_number(number), "a formatted field")
        if match.group(3) != "%":
            taken += 1


_PERCENT_RE = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])?")


def _check_format_spec(spec: str) -> None:
    """A `str.format` field's spec (`{:>300000000}`): any number in it over the budget."""
    for number in re.findall(r"\d+", spec):
        _refuse_size(_big_number(number), "a formatted field")


def _check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not isinstance(text, (str, bytes)):
        return
    if not (isinstance(old, type(text)) and isinstance(new, type(text))):
        return
    times: int = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    _refuse_size(len(text) + times * (len(new) - len(old)), "the replaced text")


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(separator, (str, bytes)) and isinstance(items, (list, tuple)) and items:
        _refuse_size(len(separator) * (len(items) - 1), "the joined text")


def _check_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A call of a str or bytes method that widens text, or of int.to_bytes."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    first = args[0] if args else None
    if isinstance(owner, (str, bytes, bytearray)):
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_width(kwargs.get("width", first), f"the result of {name}()")
        elif name == "expandtabs":
            tabsize = kwargs.get("tabsize", first if args else 8)
            if isinstance(tabsize, int):
                tab: Any = "\t" if isinstance(owner, str) else b"\t"
                tabs = owner.count(tab)
                _refuse_size(len(owner) + tabs * tabsize, "the expanded text")
        elif name == "replace" and len(args) >= 2:
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            _check_replace(owner, args[0], args[1], count)
        elif name == "join":
            _check_join(owner, first)
        elif name == "translate" and isinstance(first, dict):
            texts = [v for v in first.values() if isinstance(v, (str, bytes))]
            longest = max((len(v) for v in texts), default=1)
            _refuse_size(len(owner) * longest, "the translated text")
    elif isinstance(owner, int) and name == "to_bytes":
        _check_width(kwargs.get("length", first), "the bytes")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(right, int) and isinstance(left, _SIZED):
            _refuse_size(len(left) * right, f"the repeated {type(left).__name__}")
        elif isinstance(left, int) and isinstance(right, _SIZED):
            _refuse_size(len(right) * left, f"the repeated {type(right).__name__}")
        elif isinstance(left, int) and isinstance(right, int):
            _refuse_bits(abs(left).bit_length() + abs(right).bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _refuse_bits(right * abs(left).bit_length())
    elif operator == "+":
        if isinstance(left, _SIZED) and isinstance(right, _SIZED):
            _refuse_size(len(left) + len(right), f"the {type(left).__name__} sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)


def _refuse_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise OverBudget(
            "number size",
            f"a number of about {bits:,} bits, over the {MAX_INT_BITS:,} a template may build",
        )


def _budgeted_range(*args: int) -> range:
    """`range()` within `render_range`."""
    items = range(*args)
    cap = _limits().render_range
    try:
        size = len(items)
    except OverflowError:
        size = cap + 1
    if size > cap:
        raise OverBudget("render_range", f"a range() of {size:,} items, over {cap:,}")
    return items


def _budgeted_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if isinstance(n, int) and isinstance(max, int):
        _refuse_size(n * max * 12, "the lorem ipsum")
    return generate_lorem_ipsum(n, html, min, max)


# Checks run before a filter, given the filter's own arguments (after any context argument);
# a TypeError from a check (arguments that do not fit) is left for the filter itself to raise.
def _before_indent(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    per_line = len(width) if isinstance(width, str) else width
    if isinstance(per_line, int):
        _refuse_size(len(str(s)) + per_line * (str(s).count("\n") + 1), "the indented text")


def _before_wordwrap(
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    wrapstring = kwargs.get("wrapstring", wrapstring)
    if isinstance(width, int) and isinstance(wrapstring, str):
        lines = len(str(s)) // max(width, 1) + 1
        _refuse_size(len(str(s)) + lines * len(wrapstring), "the wrapped text")


def _before_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_percent_format(str(value), kwargs or tuple(args))


def _before_batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    if fill_with is not None:
        _check_width(linecount, "a batch")


def _before_slice(value: Any, slices: Any, fill_with: Any = None) -> None:
    if isinstance(slices, int) and slices > _limits().render_range:
        raise OverBudget("render_range", f"slice({slices:,}), over {_limits().render_range:,}")


def _before_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, (int, float)):
        # Adding up lists or strings copies every partial sum: quadratic, in one C call.
        raise ValueError("in templates, sum adds numbers only")  # noqa: TRY004 (as jinja raises)


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda value, width=80: _check_width(width, "the centered text"),
    "indent": _before_indent,
    "wordwrap": _before_wordwrap,
    "format": _before_format,
    "join": lambda value, d="", attribute=None: _check_join(d, value),
    "replace": lambda s, old, new, count=None: _check_replace(
        str(s), str(old), str(new), -1 if count is None else count
    ),
    "batch": _before_batch,
    "slice": _before_slice,
    "sum": _before_sum,
}


def _checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    before = _FILTER_CHECKS.get(name)
    # Filters marked pass_context (and the like) take that object first.
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0

    @wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            try:
                before(*args[skip:], **kwargs)
            except TypeError:
                pass
        return _checked(function(*args, **kwargs))

    return checked


class _CheckedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        return super().format_field(value, format_spec)


class _CheckedEscapeFormatter(SandboxedEscapeFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        return super().format_field(value, format_spec)


class _CheckedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every `~` concatenation checked against the budget."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


def _checked_concat(parts: Any) -> str:
    """Joins the output of a macro, a `{% set %}` block or a `{% filter %}` block."""
    return _checked("".join(parts))


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with each hook checking the budget of the render under way
    (`current_render`). Build it with `optimized=False`."""

    code_generator_class = _CheckedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_checked_concat)
    checked = staticmethod(_checked)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _budgeted_range
        self.globals["lipsum"] = _budgeted_lipsum
        self.filters = {name: _checked_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return _checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: PYI063 (jinja's own signature)
        _check_method(__obj, args, kwargs)
        if not isinstance(__obj, Macro):
            return _checked(super().call(__context, __obj, *args, **kwargs))
        render = current_render.get()
        if render is None:
            return super().call(__context, __obj, *args, **kwargs)
        render.macro_depth += 1
        try:
            if render.macro_depth > MAX_MACRO_DEPTH:
                raise OverBudget("macro depth", f"macros nested more than {MAX_MACRO_DEPTH} deep")
            return _checked(super().call(__context, __obj, *args, **kwargs))
        finally:
            render.macro_depth -= 1

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's `str.format`, with each field's width checked (`{:>300000000}`)."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text = value.__self__
        formatter: SandboxedFormatter = (
            _CheckedEscapeFormatter(self, escape=text.escape)
            if isinstance(text, Markup)
            else _CheckedFormatter(self)
        )
        is_format_map = value.__name__ == "format_map"

        @wraps(value)
        def checked_format(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            return _checked(type(text)(formatter.vformat(text, args, kwargs)))

        return checked_format

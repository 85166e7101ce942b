"""nanochat's calculator tool, evaluated safely.

nanochat models emit ``<|python_start|>expr<|python_end|>`` and the serving engine appends
``<|output_start|>result<|output_end|>``. nanochat itself runs ``expr`` through ``eval`` guarded by
``signal.alarm``; the gateway evaluates it inside an inference executor thread, where signals do not
work and ``eval`` is not acceptable. Instead the expression is parsed with :func:`ast.parse` and a small
whitelisted subset (``+ - * / // %``, unary ``+``/``-``, int/float literals and ``"str".count("sub")``)
is interpreted here, with every operand and result size-checked before it can grow, so the work done is
bounded by the input length and :class:`CalculatorLimits` rather than by a timer.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

__all__ = ["DEFAULT_CALCULATOR_LIMITS", "CalculatorLimits", "evaluate_calculator"]

Number = int | float

# Keeping keywords and backslashes from the tokenizer avoids its "invalid literal/escape" warnings.
_OUTSIDE_STRING_CHARS = frozenset("0123456789+-*/%(). ")
_QUOTES = "'\""
_COUNT = "count"

_BINARY_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_UNARY_OPS = (ast.UAdd, ast.USub)


@dataclass(frozen=True, slots=True)
class CalculatorLimits:
    """Bounds that make :func:`evaluate_calculator` cheap by construction.

    Attributes:
        max_expr_chars: longer inputs are rejected before any parsing.
        max_abs_value: largest magnitude allowed for any literal, intermediate or result.
        max_string_chars: longest string literal allowed in ``"...".count("...")``.
        max_nodes: most AST nodes an expression may contain.
        max_depth: deepest AST nesting allowed (the root ``Expression`` is depth 0).
    """

    max_expr_chars: int = 200
    max_abs_value: int = 10**30
    max_string_chars: int = 1000
    max_nodes: int = 100
    max_depth: int = 32

    def __post_init__(self) -> None:
        for name in ("max_expr_chars", "max_abs_value", "max_string_chars", "max_nodes", "max_depth"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"CalculatorLimits.{name} must be a positive int, got {value!r}")


DEFAULT_CALCULATOR_LIMITS = CalculatorLimits()


class _Reject(Exception):
    """Raised internally when the expression falls outside the accepted subset or the limits."""


def evaluate_calculator(expr: str, limits: CalculatorLimits = DEFAULT_CALCULATOR_LIMITS) -> str | None:
    """Evaluate a calculator expression emitted by a nanochat model.

    Accepts arithmetic on int/float literals with ``+ - * / // %``, unary ``+``/``-`` and parentheses,
    plus ``"text".count("sub")``. Commas are removed first (as nanochat does, so ``1,234 + 5`` works),
    surrounding whitespace and one trailing ``=`` are ignored.

    Returns the result formatted like Python's ``str()`` (``"42"``, ``"3.5"``, ``"2.0"``), or ``None``
    when the expression is not acceptable: unsupported syntax, a value beyond ``limits``, division by
    zero or a non-finite float. Never raises, never uses ``eval``/``exec`` or signals, and is safe to
    call from any thread.
    """
    if not isinstance(expr, str) or len(expr) > limits.max_expr_chars:
        return None
    text = expr.replace(",", "").strip()
    if text.endswith("="):
        text = text[:-1].rstrip()
    if not text or not _lexically_plausible(text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    try:
        value = _Evaluator(limits).eval(tree, 0)
    except (_Reject, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError):
        return None
    return str(value)


def _lexically_plausible(text: str) -> bool:
    """Cheap character-level screen run before :func:`ast.parse`.

    Outside quotes only digits, operators, parentheses, dots, spaces and ``.count`` are allowed;
    inside quotes anything but a backslash. Unterminated strings are rejected.
    """
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _QUOTES:
            end = text.find(ch, i + 1)
            if end < 0 or "\\" in text[i + 1 : end]:
                return False
            i = end + 1
        elif ch == "c":
            # Only as the method name right after a dot; an identifier char after it would make a longer name.
            if not (text.startswith(_COUNT, i) and i > 0 and text[i - 1] == "."):
                return False
            i += len(_COUNT)
            if i < n and (text[i].isalnum() or text[i] == "_"):
                return False
        elif ch in _OUTSIDE_STRING_CHARS:
            i += 1
        else:
            return False
    return True


class _Evaluator:
    """Recursive interpreter for the whitelisted AST subset; one instance per expression."""

    __slots__ = ("_limits", "_nodes")

    def __init__(self, limits: CalculatorLimits) -> None:
        self._limits = limits
        self._nodes = 0

    def _enter(self, depth: int) -> None:
        # Counting on entry bounds both the work and the Python recursion of this walk.
        self._nodes += 1
        if self._nodes > self._limits.max_nodes or depth > self._limits.max_depth:
            raise _Reject

    def eval(self, node: ast.AST, depth: int) -> Number:
        """Evaluate ``node`` (an ``Expression`` root or any accepted sub-expression) to a number."""
        self._enter(depth)
        if isinstance(node, ast.Expression):
            return self.eval(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            return self._number(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY_OPS):
            operand = self.eval(node.operand, depth + 1)
            return self._number(-operand if isinstance(node.op, ast.USub) else +operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, _BINARY_OPS):
            left = self.eval(node.left, depth + 1)
            right = self.eval(node.right, depth + 1)
            return self._binop(node.op, left, right)
        if isinstance(node, ast.Call):
            return self._count(node, depth)
        raise _Reject

    def _number(self, value: object) -> Number:
        """Return ``value`` if it is a plain int/float within the magnitude limit, else reject."""
        # type() rather than isinstance(): bool is an int subclass and must not pass as a number.
        if type(value) is int:
            if abs(value) > self._limits.max_abs_value:
                raise _Reject
            return value
        if type(value) is float:
            if not math.isfinite(value) or abs(value) > self._limits.max_abs_value:
                raise _Reject
            return value
        raise _Reject

    def _binop(self, op: ast.operator, left: Number, right: Number) -> Number:
        if isinstance(op, ast.Add):
            return self._number(left + right)
        if isinstance(op, ast.Sub):
            return self._number(left - right)
        if isinstance(op, ast.Mult):
            # The only int growth path without Pow; |a*b| >= 2**(bits(a)+bits(b)-2) so check before multiplying.
            if (
                type(left) is int
                and type(right) is int
                and left.bit_length() + right.bit_length() - 2 >= self._limits.max_abs_value.bit_length()
            ):
                raise _Reject
            return self._number(left * right)
        # Div, FloorDiv and Mod remain; all are undefined for a zero divisor (int or float).
        if right == 0:
            raise _Reject
        if isinstance(op, ast.Div):
            return self._number(left / right)
        if isinstance(op, ast.FloorDiv):
            return self._number(left // right)
        return self._number(left % right)

    def _count(self, node: ast.Call, depth: int) -> int:
        """Evaluate exactly ``"receiver".count("sub")``; any other call shape is rejected."""
        func = node.func
        if (
            not isinstance(func, ast.Attribute)
            or func.attr != "count"
            or node.keywords
            or len(node.args) != 1
        ):
            raise _Reject
        self._enter(depth + 1)
        receiver = self._string(func.value, depth + 2)
        needle = self._string(node.args[0], depth + 1)
        return int(self._number(receiver.count(needle)))

    def _string(self, node: ast.expr, depth: int) -> str:
        self._enter(depth)
        if not isinstance(node, ast.Constant) or type(node.value) is not str:
            raise _Reject
        if len(node.value) > self._limits.max_string_chars:
            raise _Reject
        return node.value

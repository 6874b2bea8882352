"""Rule conditions: checked once at load, compiled once per route, evaluated per message.

The language is the subset of Python's expression syntax the issue names: comparisons (chained
too), `and`/`or`/`not`, `+ - * / // %`, field names (the route model's fields and the topic's
parameters) and string / number / boolean literals. CPython's own parser reads it (`ast.parse`);
every node of the tree is checked against that list and typed from the route's Pydantic model,
so an unknown name, an attribute, a call, a subscript, `**` or text compared with a number is a
load error naming the rule.

Evaluation: the checked trees of all rules on one route become one function (CPython bytecode)
that reads each field once and returns one value per rule. Why not an interpreter library: per
message and 20 rules, simpleeval took 200 µs, asteval 390 µs, CEL (common-expression-language)
270 µs as 20 programs and 38 µs as one, against the service's ~9 µs per message in total; the
compiled function takes about 1-5 µs (`bench/rules_expressions.py`). simpleeval stays the
reference the compiled form is tested against (tests/test_rules_load.py). Only trees made
of the listed nodes are ever compiled, and the function's globals hold no builtins.

A rule whose fields are missing from a message (None) says nothing about that message: its value
is None, and its state stays as it was.
"""

from __future__ import annotations

import ast
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

Kind = Literal["num", "str", "bool", "any"]
Evaluate = Callable[[Any, Mapping[str, Any]], tuple[bool | None, ...]]

_BOOL_OPS = (ast.And, ast.Or)
_UNARY = (ast.Not, ast.USub, ast.UAdd)
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_EQUALITY = (ast.Eq, ast.NotEq)
_MAX_LENGTH = 2000
_MAX_NODES = 200


class ExpressionError(ValueError):
    """The condition is not in the rule language, or names what the route does not have."""


@dataclass(frozen=True)
class Names:
    """What a route's expressions and templates may name: model fields and topic parameters, typed."""

    fields: Mapping[str, Kind]  # model attributes usable in conditions
    params: Mapping[str, Kind]  # topic parameters (take precedence: the topic is the truth)
    template_only: frozenset[str] = frozenset()  # in templates only (timestamps, addresses, ...)

    def kind(self, name: str) -> Kind | None:
        if name in self.params:
            return self.params[name]
        return self.fields.get(name)

    def known(self) -> list[str]:
        return sorted({*self.fields, *self.params})


def _kind_of(annotation: Any) -> Kind | None:
    """num / str / bool for a scalar field's annotation (Optional and Annotated unwrapped), else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind_of(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is Literal:
        values = typing.get_args(annotation)
        return "str" if all(isinstance(v, str) for v in values) else None
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "num"
    if annotation is str:
        return "str"
    return None


def route_names(model: type[BaseModel], params: Sequence[str], int_params: Sequence[str] = ()) -> Names:
    fields: dict[str, Kind] = {}
    other: set[str] = set()
    for name, info in model.model_fields.items():
        kind = _kind_of(info.annotation)
        if kind is None:
            other.add(name)
        else:
            fields[name] = kind
    typed: dict[str, Kind] = {p: ("num" if p in int_params else "str") for p in params}
    return Names(fields, typed, frozenset(other - set(typed)))


def check(text: str, names: Names) -> tuple[ast.expr, frozenset[str]]:
    """The condition's checked tree and the names it uses; ExpressionError says what is wrong."""
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"condition longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"condition {text!r} does not parse: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise ExpressionError(f"condition has more than {_MAX_NODES} parts")
    used: set[str] = set()
    _kind(tree.body, names, used)
    return tree.body, frozenset(used)


def _kind(node: ast.expr, names: Names, used: set[str]) -> Kind:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int | float):
            return "num"
        if isinstance(value, str):
            return "str"
        raise ExpressionError(f"literal {value!r} is not allowed (strings, numbers, True, False)")
    if isinstance(node, ast.Name):
        kind = names.kind(node.id)
        if kind is None:
            if node.id in names.template_only:
                raise ExpressionError(f"field {node.id!r} cannot be used in a condition (not a number, text or bool)")
            raise ExpressionError(f"unknown field {node.id!r} (known: {', '.join(names.known())})")
        used.add(node.id)
        return kind
    if isinstance(node, ast.BoolOp) and isinstance(node.op, _BOOL_OPS):
        kinds = {_kind(v, names, used) for v in node.values}
        return kinds.pop() if len(kinds) == 1 else "any"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
        kind = _kind(node.operand, names, used)
        if isinstance(node.op, ast.Not):
            return "bool"
        if kind != "num":
            raise ExpressionError(f"sign of a non-number in {ast.unparse(node)!r}")
        return "num"
    if isinstance(node, ast.BinOp) and isinstance(node.op, _ARITHMETIC):
        left, right = _kind(node.left, names, used), _kind(node.right, names, used)
        if left == right == "num":
            return "num"
        if left == right == "str" and isinstance(node.op, ast.Add):
            return "str"
        raise ExpressionError(f"arithmetic on something other than numbers in {ast.unparse(node)!r}")
    if isinstance(node, ast.Compare) and all(isinstance(op, _ORDER + _EQUALITY) for op in node.ops):
        operands = [_kind(node.left, names, used), *(_kind(c, names, used) for c in node.comparators)]
        for op, a, b in zip(node.ops, operands, operands[1:], strict=False):
            if "any" in (a, b) or a != b or (isinstance(op, _ORDER) and a == "bool"):
                raise ExpressionError(f"{ast.unparse(node)!r} compares {a} with {b}")
        return "bool"
    what = {
        ast.Attribute: "attribute access", ast.Call: "calls", ast.Subscript: "subscripts",
        ast.Lambda: "lambdas", ast.IfExp: "if/else", ast.NamedExpr: "assignments",
    }.get(type(node))  # fmt: skip
    if what is None and isinstance(node, ast.BinOp | ast.UnaryOp | ast.BoolOp | ast.Compare):
        what = f"operator {ast.unparse(node)!r}"
    raise ExpressionError(f"{what or type(node).__name__} not allowed (only comparisons, and/or/not, arithmetic)")


def compile_route(conditions: Sequence[tuple[ast.expr, frozenset[str]]], names: Names) -> Evaluate:
    """One function for all of a route's conditions: (model, topic params) -> one value per rule."""
    body = _reads(conditions, names)
    values = [_guarded(tree, u, names) for tree, u in conditions]
    body.append(ast.Return(ast.Tuple(values, ast.Load())))
    return _function(body)


def compile_any(conditions: Sequence[tuple[ast.expr, frozenset[str]]], names: Names) -> Callable[[Any, Any], bool]:
    """(model, topic params) -> whether any condition holds: `c0 or c1 or …`, stopping at the first.

    The fast path of a device whose rules are all false (service/rules/stage.py): no tuple, no
    guards. A missing field makes an ordering raise TypeError (the caller then evaluates in full) or
    an equality False, which leaves a false rule false all the same.
    """
    body = _reads(conditions, names)
    tests = _loosest([_Rename().visit(_copy(tree)) for tree, _ in conditions])
    test: ast.expr = tests[0] if len(tests) == 1 else ast.BoolOp(ast.Or(), tests)
    body.append(ast.Return(ast.UnaryOp(ast.Not(), ast.UnaryOp(ast.Not(), test))))
    any_true: Callable[[Any, Any], bool] = _function(body)  # type: ignore[assignment]
    return any_true


_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Lt: ast.Gt, ast.LtE: ast.GtE}


def _loosest(tests: Sequence[ast.expr]) -> list[ast.expr]:
    """The disjuncts of `t0 or t1 or …` with the same answer to "does any hold", fewer of them: the
    top-level `or`s flattened, repeats dropped, and of the bounds `E > c1`, `E > c2` … on one
    expression E only the loosest kept (`E > min(c)`; `E < max(c)` likewise). Twenty rules that
    differ in a threshold cost one comparison on the fast path, not twenty."""
    flat: list[ast.expr] = []
    for test in tests:
        flat.extend(_disjuncts(test))
    out: list[ast.expr] = []
    seen: set[str] = set()
    bounds: dict[tuple[str, type[ast.cmpop]], tuple[int, int | float]] = {}  # (E, op) -> (index in out, c)
    for test in flat:
        text = ast.unparse(test)
        if text in seen:
            continue
        seen.add(text)
        bound = _bound(test)
        if bound is None:
            out.append(test)
            continue
        left, op, value = bound
        key = (ast.unparse(left), op)
        if key not in bounds:
            bounds[key] = (len(out), value)
            out.append(ast.Compare(left, [op()], [ast.Constant(value)]))
            continue
        index, old = bounds[key]
        loosest = min(old, value) if op in (ast.Gt, ast.GtE) else max(old, value)
        bounds[key] = (index, loosest)
        out[index] = ast.Compare(left, [op()], [ast.Constant(loosest)])
    return out


def _disjuncts(test: ast.expr) -> list[ast.expr]:
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return [d for v in test.values for d in _disjuncts(v)]
    return [test]


def _bound(test: ast.expr) -> tuple[ast.expr, type[ast.cmpop], int | float] | None:
    """`E op c` or `c op E` with op one of > >= < <= and c a number literal: (E, op as `E op c`, c)."""
    if not isinstance(test, ast.Compare) or len(test.ops) != 1 or type(test.ops[0]) not in _FLIP:
        return None
    op, left, right = type(test.ops[0]), test.left, test.comparators[0]
    value = _number(right)
    if value is not None and _number(left) is None:
        return left, op, value
    value = _number(left)
    if value is not None and _number(right) is None:
        return right, _FLIP[op], value
    return None


def _number(node: ast.expr) -> int | float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    return None


def _reads(conditions: Sequence[tuple[ast.expr, frozenset[str]]], names: Names) -> list[ast.stmt]:
    used = sorted(set().union(*(u for _, u in conditions))) if conditions else []
    body: list[ast.stmt] = []
    for name in used:
        # Read once per message: a topic parameter from the params, anything else from the model.
        source: ast.expr = (
            ast.Subscript(ast.Name("p", ast.Load()), ast.Constant(name), ast.Load())
            if name in names.params
            else ast.Attribute(ast.Name("m", ast.Load()), name, ast.Load())
        )
        body.append(ast.Assign([ast.Name(f"v_{name}", ast.Store())], source))
    return body


def compile_one(condition: tuple[ast.expr, frozenset[str]], names: Names) -> Evaluate:
    return compile_route([condition], names)


def _guarded(tree: ast.expr, used: frozenset[str], names: Names) -> ast.expr:
    renamed = _Rename().visit(_copy(tree))
    # `not not x`: a plain bool without a call (no builtins in the function's globals).
    value: ast.expr = ast.UnaryOp(ast.Not(), ast.UnaryOp(ast.Not(), renamed))
    nullable = [n for n in sorted(used) if n not in names.params]
    if not nullable:
        return value
    missing: list[ast.expr] = [
        ast.Compare(ast.Name(f"v_{n}", ast.Load()), [ast.Is()], [ast.Constant(None)]) for n in nullable
    ]
    test = missing[0] if len(missing) == 1 else ast.BoolOp(ast.Or(), missing)
    return ast.IfExp(test, ast.Constant(None), value)


class _Rename(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(f"v_{node.id}", ast.Load())


def _copy(tree: ast.expr) -> ast.expr:
    return ast.parse(ast.unparse(tree), mode="eval").body


def _function(body: list[ast.stmt]) -> Evaluate:
    args = ast.arguments(posonlyargs=[], args=[ast.arg("m"), ast.arg("p")], kwonlyargs=[], kw_defaults=[], defaults=[])
    fn = ast.FunctionDef(name="evaluate", args=args, body=body, decorator_list=[], returns=None)
    module = ast.fix_missing_locations(ast.Module([fn], []))
    namespace: dict[str, Any] = {"__builtins__": {}}
    # Only checked trees (the node types above) and our own reads reach this point.
    exec(compile(module, "<rules>", "exec"), namespace)
    evaluate: Evaluate = namespace["evaluate"]
    return evaluate

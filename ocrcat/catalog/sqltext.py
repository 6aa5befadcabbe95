"""SQL text: string literals, and SQL as users write it made to mean what they meant on the pinned DuckDB.

DuckDB 1.5's grammar gives the JSON arrows `->` and `->>` a lower precedence than `AND` and `=`
(they share the lambda arrow's rule), so `source = 'x' AND meta->>'origin' = 'human'` parses as
`((source = 'x' AND meta) ->> 'origin') = 'human'` and fails with a cast error. DuckDB 2.0 fixed
the grammar, but the DuckLake extension packages pin 1.5. The predicates in the spec, the README
and users' own files are written the natural way, so every arrow whose right side is a literal
(a JSON key or index, which a lambda body never is in practice) is wrapped in parentheses with its
left operand before the SQL reaches DuckDB: `(meta->>'origin') = 'human'`.
"""

from __future__ import annotations

import re

# One lexical token: a quoted string, a quoted identifier, a comment, a word, an arrow, a bracket,
# white space, or any other single character. Strings and comments are kept whole, so an arrow
# inside them is never touched.
_TOKEN = re.compile(
    r"""'(?:[^']|'')*'?          # string literal ('' escapes a quote)
      | "(?:[^"]|"")*"?          # quoted identifier
      | --[^\n]*                 # line comment
      | /\*.*?(?:\*/|$)          # block comment
      | ->>|->                   # the JSON arrows
      | [A-Za-z_0-9$]+           # word: identifier, keyword or number
      | \s+
      | .""",
    re.VERBOSE | re.DOTALL,
)
_LITERAL = re.compile(r"'(?:[^']|'')*'|\d+")


def sql_string(text: str) -> str:
    """`text` as a SQL string literal. For the places DuckDB takes no parameter (COPY's target, DDL)
    or where one costs: a prepared `read_parquet(?)` streams about 20x slower than a literal path."""
    return "'" + text.replace("'", "''") + "'"


def bind_json_arrows(sql: str) -> str:
    """`sql` with every `operand->'key'` / `operand->>'key'` (or `->>0`) parenthesised."""
    tokens = _TOKEN.findall(sql)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("->", "->>"):
            j = i + 1
            while j < len(tokens) and tokens[j].isspace():
                j += 1
            start = _operand_start(out)
            if j < len(tokens) and _LITERAL.fullmatch(tokens[j]) and start is not None:
                out[start:] = ["(", *out[start:], *tokens[i : j + 1], ")"]
                i = j + 1
                continue
        out.append(token)
        i += 1
    return "".join(out)


def _operand_start(out: list[str]) -> int | None:
    """Index in `out` where the operand that ends `out` starts: a dotted name, or a bracketed
    group with the function name before it; None when there is no such operand."""
    k = len(out) - 1
    while k >= 0 and out[k].isspace():
        k -= 1
    if k < 0:
        return None
    if out[k] == ")":
        depth = 0
        while k >= 0:
            depth += out[k] == ")"
            depth -= out[k] == "("
            if depth == 0:
                break
            k -= 1
        if k < 0:
            return None
        if k > 0 and _is_name(out[k - 1]) and out[k - 1].upper() not in _KEYWORDS:
            k -= 1  # a function call: json_extract(meta, '$.a')->>'b'
    elif not _is_name(out[k]):
        return None
    while k >= 2 and out[k - 1] == "." and _is_name(out[k - 2]):  # samples.meta, "t"."meta"
        k -= 2
    if k >= 3 and out[k - 1] == ":" and out[k - 2] == ":":  # meta::JSON->>'a': the cast is the operand
        inner = _operand_start(out[: k - 2])
        return inner if inner is not None else k
    return k


# Words that can stand right before a bracket without being a function's name.
_KEYWORDS = {"AND", "OR", "NOT", "WHERE", "SELECT", "ON", "WHEN", "THEN", "ELSE", "CASE", "IN", "IS",
             "LIKE", "ILIKE", "BY", "AS", "FROM", "HAVING", "BETWEEN", "DISTINCT", "RETURN", "USING"}


def _is_name(token: str) -> bool:
    return bool(re.fullmatch(r'[A-Za-z_][A-Za-z_0-9$]*|"(?:[^"]|"")*"', token))

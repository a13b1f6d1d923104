"""Source files: their programming language (as pygments names it) and where their top-level definitions start.

Chunks of a source file start at definitions where they can (`chunking.split_on_boundaries`):
- Python: the top-level `def`, `async def` and `class` statements found by `ast` (decorators included);
- any other language, or Python that does not parse: a line at column 0, right after a blank line, whose first
  pygments token is not a comment, string, operator or punctuation (a closing brace...): in practice a keyword
  (`function`, `func`, `fn`, `class`, `int`...) or a name (`build() {`);
- either way, the comment lines (doc comments, decorators, attributes, preprocessor lines: comments to pygments)
  directly above a definition belong to it.
Declarations nested in a top-level block (Java's methods in their class) are not boundaries: a class longer than
a chunk is split like prose.
"""

from __future__ import annotations

import ast
import bisect
import itertools

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_for_filename
from pygments.token import Comment, Operator, Punctuation, String, _TokenType
from pygments.util import ClassNotFound

# Suffixes read as source code; pygments names the language (the text decides between lexers sharing a suffix).
CODE_SUFFIXES = frozenset(
    {
        *(".py", ".pyi", ".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".java", ".kt", ".kts", ".scala", ".groovy"),
        *(".go", ".rs", ".c", ".h", ".cpp", ".cc", ".cxx", ".hpp", ".hh", ".cs", ".rb", ".php", ".swift", ".sh"),
        *(".bash", ".zsh", ".ps1", ".pl", ".pm", ".lua", ".r", ".sql", ".hs", ".ml", ".ex", ".exs", ".erl", ".clj"),
        *(".dart", ".jl"),
    }
)
NOT_DEFINITIONS = (Comment, String, Operator, Punctuation)  # closing braces, continued expressions...
COMMENTS = (Comment, String.Doc)
PYTHON_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def code_lexer(name: str, text: str) -> Lexer | None:
    """The pygments lexer for a source file, or None when pygments knows no language for its name."""
    try:
        return get_lexer_for_filename(name, code=text)
    except ClassNotFound:
        return None


def language_name(lexer: Lexer) -> str:
    return lexer.name.lower()


def definition_starts(text: str, lexer: Lexer) -> tuple[int, ...]:
    """Character offsets of the lines where top-level definitions start (with their leading comments)."""
    lines = text.splitlines(keepends=True)
    line_tokens = _line_tokens(text, lexer, lines)
    starts = _python_definitions(text) if language_name(lexer) == "python" else None
    if starts is None:
        starts = [number for number in range(1, len(lines)) if _starts_definition(lines, line_tokens, number)]
    offsets = [0, *itertools.accumulate(len(line) for line in lines)]
    return tuple(sorted({offsets[_with_comments_above(lines, line_tokens, number)] for number in starts} - {0}))


def _python_definitions(text: str) -> list[int] | None:
    """0-based line numbers of the top-level definitions, decorators included; None if the text does not parse."""
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    return [
        min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)]) - 1
        for node in module.body
        if isinstance(node, PYTHON_DEFINITIONS)
    ]


def _line_tokens(text: str, lexer: Lexer, lines: list[str]) -> list[_TokenType | None]:
    """Per line, the type of the token at its first non-space character (None for a blank line)."""
    tokens = list(lexer.get_tokens_unprocessed(text))
    token_starts = [index for index, _, _ in tokens]
    types: list[_TokenType | None] = []
    for offset, line in zip(itertools.accumulate((len(line) for line in lines), initial=0), lines, strict=False):
        indent = len(line) - len(line.lstrip())
        types.append(tokens[bisect.bisect_right(token_starts, offset + indent) - 1][1] if line.strip() else None)
    return types


def _starts_definition(lines: list[str], line_tokens: list[_TokenType | None], number: int) -> bool:
    token_type = line_tokens[number]
    if lines[number][:1].isspace() or token_type is None or any(token_type in kind for kind in NOT_DEFINITIONS):
        return False
    above = _with_comments_above(lines, line_tokens, number) - 1
    return above < 0 or not lines[above].strip()


def _with_comments_above(lines: list[str], line_tokens: list[_TokenType | None], number: int) -> int:
    """The first line of the run of comment lines directly above line `number` (or `number` itself)."""
    while number > 0 and _is_comment(lines[number - 1], line_tokens[number - 1]):
        number -= 1
    return number


def _is_comment(line: str, token_type: _TokenType | None) -> bool:
    return token_type is not None and (any(token_type in kind for kind in COMMENTS) or line.startswith("@"))

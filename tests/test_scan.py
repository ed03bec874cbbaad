"""nasir.scan: the one comment/string/bracket-aware scanner of .cell and genotype text.

Expected values are worked out by hand from the inputs (offsets counted in the comments), and the
Python lexicon's brackets and strings are checked against the standard library's tokenize module.
"""

from __future__ import annotations

import io
import random
import tokenize

from nasir import scan
from nasir.scan import CELL, PYTHON

KEYWORDS = scan.CELL_DECLARATIONS


def kinds(text, lex):
    return [(t.kind, text[t.start : t.end]) for t in scan.tokens(text, lex)]


def test_python_tokens_of_a_line_with_strings_brackets_and_a_comment():
    text = "x = f('(#', \"]\")  # [\n"
    assert kinds(text, PYTHON) == [
        ("code", "x"), ("space", " "), ("code", "="), ("space", " "), ("code", "f"), ("open", "("),
        ("string", "'(#'"), ("code", ","), ("space", " "), ("string", '"]"'), ("close", ")"),
        ("space", "  "), ("comment", "# ["), ("newline", "\n"),
    ]  # fmt: skip


def test_cell_tokens_have_no_escapes_and_no_single_quotes():
    # .cell strings are "..." without escapes: "a\" ends at the second quote; ' and ( are plain code.
    text = 'include "a\\" x\'(y'
    assert kinds(text, CELL) == [
        ("code", "include"), ("space", " "), ("string", '"a\\"'), ("space", " "), ("code", "x'(y"),
    ]


def test_python_escaped_quote_stays_inside_the_string():
    text = r"'it\'s (' + 'x'"
    toks = [(k, s) for k, s in kinds(text, PYTHON) if k != "space"]
    assert toks == [("string", r"'it\'s ('"), ("code", "+"), ("string", "'x'")]


def test_unterminated_string_ends_at_its_line():
    # Line 1 opens a string that never closes; the '(' on line 2 is code again.
    text = "a = 'abc [\nb = (1,\n"
    assert ("string", "'abc [") in kinds(text, PYTHON)
    assert scan.open_brackets(text, len(text), PYTHON) == [("(", 15)]  # 'a = ' 4 + "'abc [" 6 + '\n' 1 + 'b = ' 4
    text = 'cell x { "unterminated\n}\nnetwork n'
    assert scan.depth_at(text, len(text), CELL) == 0
    assert [text[a:b].split()[0] for a, b in scan.top_level_chunks(text, KEYWORDS, CELL)] == ["cell", "network"]


def test_triple_quoted_string_spans_lines_and_hides_brackets():
    text = 'x = 1\n"""doc (\n[ # not a comment\n"""\ny = [2,\n 3]\n'
    toks = kinds(text, PYTHON)
    assert ("string", '"""doc (\n[ # not a comment\n"""') in toks
    assert not any(k == "comment" for k, _ in toks)
    assert scan.open_brackets(text, len(text), PYTHON) == []
    lines = [text[a:b] for a, b in scan.logical_lines(text, PYTHON)]
    assert lines == ["x = 1", '"""doc (\n[ # not a comment\n"""', "y = [2,\n 3]"]


def test_unterminated_triple_string_runs_to_the_end():
    text = "a = '''open (\n(\n"
    assert kinds(text, PYTHON)[-1] == ("string", "'''open (\n(\n")
    assert scan.open_brackets(text, len(text), PYTHON) == []


def test_open_brackets_nested_innermost_last_and_mismatched_closer_ignored():
    text = "f([{'}': (1)}, ]"
    #       0123456789012345
    # f ( [ {  '}' string  : ( 1 ) }  ,  ]   -> the ')' of (1) and the '}' close; ']' closes '['; '(' stays
    assert scan.open_brackets(text, len(text), PYTHON) == [("(", 1)]
    assert scan.open_brackets(text, 4, PYTHON) == [("(", 1), ("[", 2), ("{", 3)]
    assert scan.depth_at(text, 4, PYTHON) == 3
    # a ']' while '(' is innermost is a stray closer: ignored, the '(' stays open
    assert scan.open_brackets("([(]", 4, PYTHON) == [("(", 0), ("[", 1), ("(", 2)]


def test_open_brackets_at_an_offset_inside_a_string_or_comment():
    text = "a = ('x(y' # (\n, 1)"
    # up to offset 8 (inside the string) only the '(' at 4 is open; the string's '(' is text
    assert scan.open_brackets(text, 8, PYTHON) == [("(", 4)]
    assert scan.open_brackets(text, text.index("\n"), PYTHON) == [("(", 4)]
    assert scan.open_brackets(text, len(text), PYTHON) == []


def test_cell_depth_counts_braces_only():
    text = 'cell a { edges x -> y : choice(s) # }\n  inputs "}" '
    assert scan.depth_at(text, len(text), CELL) == 1
    assert scan.depth_at(text, text.index("{"), CELL) == 0
    assert scan.depth_at(text, text.index("{") + 1, CELL) == 1
    # an unclosed '(' in broken .cell text does not count: braces alone delimit declarations
    assert scan.depth_at("cell a { x ( }", 14, CELL) == 0


def test_top_level_chunks_skip_keywords_in_strings_comments_blocks_and_words():
    text = (
        'include "cell.cell"\n'  # 0: 'cell' inside a string
        "# network in a comment\n"  # 20
        "cell a {\n"  # 43
        "  nodes search, cellx\n"  # a keyword inside braces, and a longer word
        "}\n"
        "network n() { }  opset s = {a}\n"
    )
    chunks = scan.top_level_chunks(text, KEYWORDS, CELL)
    starts = [a for a, _ in chunks]
    assert starts == [0, 43, text.index("network n"), text.index("opset")]
    assert chunks[-1][1] == len(text)
    assert text[chunks[0][0] : chunks[0][1]] == 'include "cell.cell"\n# network in a comment\n'


def test_skip_trivia_skips_space_newlines_and_comments_only():
    text = "  # c\n\t\n  x = 1"
    assert scan.skip_trivia(text, PYTHON) == text.index("x")
    assert scan.skip_trivia("   # only a comment", PYTHON) == len("   # only a comment")
    assert scan.skip_trivia("a  b", PYTHON, 1) == 3


def test_logical_lines_join_brackets_and_backslashes_and_drop_comment_lines():
    text = "a = [1,\n  2]  # x\n# only a comment\n\nb = 1 + \\\n  2\nc = ')'\n"
    assert [text[a:b] for a, b in scan.logical_lines(text, PYTHON)] == [
        "a = [1,\n  2]  # x", "b = 1 + \\\n  2", "c = ')'",
    ]
    assert scan.logical_lines("x", PYTHON) == [(0, 1)]  # the last line needs no newline


def test_too_deep_reports_the_first_bracket_past_the_limit():
    assert scan.too_deep("((()))", 3, PYTHON) is None
    assert scan.too_deep("(({[", 3, PYTHON) == 3
    assert scan.too_deep("'((((' (", 1, PYTHON) is None  # brackets in a string do not nest
    assert scan.too_deep("()()()()", 1, PYTHON) is None


def test_blank_outside_keeps_offsets_and_lines():
    text = "ab\ncd\nef"
    out = scan.blank_outside(text, 3, 5)
    assert out == "  \ncd\n  "
    assert len(out) == len(text)


def _random_python(rng: random.Random) -> str:
    pieces = ["(", ")", "[", "]", "{", "}", "x", "1", ",", " ", "\n", "# c ( [\n", "'a(b'", '"]#"',
              "'''q\n(\n'''", "'\\''", '"\\"("', "\\\n"]  # fmt: skip
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))


def test_python_brackets_and_strings_agree_with_the_tokenize_module():
    """For random snippets that Python's own tokenizer accepts, the scanner finds the same brackets and strings."""
    rng = random.Random(0)
    compared = 0
    for _ in range(3000):
        text = _random_python(rng)
        try:
            ref = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue
        if any(t.type == tokenize.ERRORTOKEN for t in ref):
            continue
        starts = [0]
        for line in text.splitlines(keepends=True):
            starts.append(starts[-1] + len(line))

        def off(pos, starts=starts):
            return starts[pos[0] - 1] + pos[1]

        want_brackets = [off(t.start) for t in ref if t.type == tokenize.OP and t.string in "()[]{}"]
        want_strings = [(off(t.start), off(t.end)) for t in ref if t.type == tokenize.STRING]
        got = list(scan.tokens(text, PYTHON))
        assert [t.start for t in got if t.kind in ("open", "close")] == want_brackets, text
        assert [(t.start, t.end) for t in got if t.kind == "string"] == want_strings, text
        compared += 1
    assert compared > 200

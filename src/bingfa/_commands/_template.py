"""``bingfa run``'s command templates: GNU parallel's replacement strings.

=========  ==================================================  ====================
string     replaced by                                         ``dir/file.tar.gz``
=========  ==================================================  ====================
``{}``     the argument (all of them, with several sources)    ``dir/file.tar.gz``
``{.}``    without its extension                               ``dir/file.tar``
``{/}``    its base name                                       ``file.tar.gz``
``{//}``   its directory (``.`` for none)                      ``dir``
``{/.}``   base name without extension                         ``file.tar``
``{#}``    the job's number, from 1
``{%}``    the job's slot, from 1 to ``-j``
``{N}``    the argument from source N; also ``{N.}`` ``{N/}`` ``{N//}`` ``{N/.}``
=========  ==================================================  ====================

Braces holding anything else than digits and ``./#%`` are plain text (so
``awk '{print $1}'`` is left alone); braces holding only those but in no form
above, such as ``{..}`` or ``{0}``, are an error rather than a silent literal.
"""

from __future__ import annotations

import os

from ._spawn import resolve, split_command

TYPE_CHECKING = False  # no typing, re or shlex at run time: bingfa run starts fast
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Template"]

_TOKEN_CHARS = frozenset("0123456789./#%")
_PATH_FORMS = ("", ".", "/", "//", "/.")

# Characters that make a command line need a shell. Without them, and without
# a leading assignment or shell keyword, the words can be run directly: the
# same result as ``sh -c`` without paying for a shell per job.
_SHELL_CHARS = frozenset("|&;<>()$`\\\"'*?[]#~!{}\n")
_SHELL_WORDS = frozenset({
    "!", ".", ":", "[[", "alias", "case", "cd", "command", "declare", "eval", "exec", "exit",
    "export", "for", "function", "if", "local", "read", "readonly", "return", "select", "set",
    "shift", "source", "time", "trap", "typeset", "ulimit", "umask", "unset", "until", "wait",
    "while", "{",
})

# A compiled piece: literal text, or (source index or -1 for all, form)
_Piece = str | tuple[int, str]


def _apply(form: str, value: str) -> str:
    if form == "":
        return value
    if form == "/":
        return os.path.basename(value)
    if form == "//":
        return os.path.dirname(value) or "."
    base = os.path.basename(value) if form == "/." else value
    head, slash, tail = base.rpartition("/")
    stem, dot, _ = tail.rpartition(".")
    return base if not dot or not stem else head + slash + stem


def _tokens(text: str) -> list[tuple[int, int, str, str]]:
    """Each ``{digits forms}`` in ``text``: (start, end, digits, forms)."""
    found = []
    at = text.find("{")
    while at >= 0:
        end = text.find("}", at + 1)
        if end < 0:
            break
        inner = text[at + 1:end]
        if "{" in inner:
            at = text.find("{", at + 1)
            continue
        if _TOKEN_CHARS.issuperset(inner):
            digits = inner[:len(inner) - len(inner.lstrip("0123456789"))]
            found.append((at, end + 1, digits, inner[len(digits):]))
        at = text.find("{", end + 1)
    return found


def _compile(text: str, sources: int) -> list[_Piece]:
    """``text`` cut into literals and replacements; ValueError for a bad one."""
    pieces: list[_Piece] = []
    at = 0
    for start, end, number, form in _tokens(text):
        token = text[start:end]
        if number == "" and form in ("#", "%"):
            piece: _Piece = (0, form)
        elif form in _PATH_FORMS and number == "":
            piece = (-1, form)
        elif form in _PATH_FORMS and int(number) >= 1:
            if int(number) > sources:
                raise ValueError(f"replacement string {token} refers to input source "
                                 f"{number}, but there {'is' if sources == 1 else 'are'} "
                                 f"only {sources}")
            piece = (int(number), form)
        else:
            raise ValueError(f"unknown replacement string {token}: use {{}} {{.}} {{/}} "
                             "{//} {/.} {#} {%} or {N} with N >= 1")
        if start > at:
            pieces.append(text[at:start])
        pieces.append(piece)
        at = end
    if at < len(text):
        pieces.append(text[at:])
    return pieces


def _fill(pieces: list[_Piece], values: Sequence[str], seq: int, slot: int,
          quote: bool) -> str:
    if quote:
        import shlex
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        index, form = piece
        if form == "#":
            out.append(str(seq))
        elif form == "%":
            out.append(str(slot))
        elif index == -1:
            done = [_apply(form, v) for v in values]
            out.append(" ".join(shlex.quote(v) for v in done) if quote else " ".join(done))
        else:
            value = _apply(form, values[index - 1])
            out.append(shlex.quote(value) if quote else value)
    return "".join(out)


class Template:
    """A command with replacement strings, ready to be filled for each job.

    Args:
        words: the command's words. As a shell string (``argv=False``) they are
            joined with spaces and run by ``shell``, with each argument
            shell-quoted where it is put; as an argv (``argv=True``, the words
            after ``--``) each word is one argument and no shell is involved.
        sources: how many input sources there are (for ``{N}``).
        shell: the shell that runs a command line that needs one.
        functions: names of shell functions the environment exports: a
            command that starts with one needs the shell.

    Raises:
        ValueError: an empty command, an unknown replacement string, ``{N}``
            beyond the sources, or unbalanced quotes in a shell string.
    """

    def __init__(self, words: Sequence[str], *, argv: bool, sources: int,
                 shell: str = "/bin/sh", functions: frozenset[str] = frozenset()) -> None:
        if not words or not "".join(words).strip():
            raise ValueError("no command given")
        self.is_argv = argv
        self.sources = sources
        self.shell = shell
        self._functions = functions
        self.text = " ".join(words)
        self._words = [_compile(w, sources) for w in words] if argv else []
        self._line = _compile(self.text, sources)
        pieces = [p for w in (self._words or [self._line]) for p in w]
        self.uses_slot = any(p == (0, "%") for p in pieces)
        self.appends = not any(isinstance(p, tuple) for p in pieces)
        self.direct: list[list[_Piece]] | None = None
        if argv:
            self.direct = self._words
        else:
            if "'" in self.text or '"' in self.text or "\\" in self.text:
                split_command(self.text, comments=True)  # ValueError for unbalanced quotes
            self.direct = self._direct_words(sources)

    def _direct_words(self, sources: int) -> list[list[_Piece]] | None:
        """The shell string as words to run without a shell, or None if it needs one."""
        literal = "".join(p for p in self._line if isinstance(p, str))
        if _SHELL_CHARS.intersection(literal) or any(
                c.isspace() and c != " " for c in literal):
            return None  # the shell splits on spaces and tabs only; let it decide
        words = [word for word in self.text.split(" ") if word]
        first = words[0]
        if "=" in first or first in _SHELL_WORDS:
            return None
        compiled = [_compile(w, sources) for w in words]
        if compiled[0] != [first]:
            if self._functions:
                return None  # the program comes from the arguments: it may be a function
        elif first in self._functions:
            return None  # an exported function: only the shell knows it
        elif resolve(first) is None:
            return None  # let the shell say "not found", with status 127, as GNU parallel does
        for word in compiled:
            # With several sources {} is several words; inside a longer word only
            # the shell knows how that splits.
            if sources > 1 and len(word) > 1 and any(
                    isinstance(p, tuple) and p[0] == -1 for p in word):
                return None
        return compiled

    def argv(self, values: Sequence[str], seq: int, slot: int) -> list[str]:
        """What to run for one job: its arguments ``values`` (one per source)."""
        if self.direct is not None:
            out: list[str] = []
            for word in self.direct:
                if len(word) == 1 and isinstance(word[0], tuple) and word[0][0] == -1:
                    out += [_apply(word[0][1], v) for v in values]  # {} -> one word each
                else:
                    out.append(_fill(word, values, seq, slot, quote=False))
            if self.appends:
                out += values
            return out
        return [self.shell, "-c", self.line(values, seq, slot)]

    def line(self, values: Sequence[str], seq: int, slot: int) -> str:
        """The job as one shell-quoted command line (to show, log, or run with ``sh -c``)."""
        import shlex

        if self.is_argv:
            return shlex.join(self.argv(values, seq, slot))
        line = _fill(self._line, values, seq, slot, quote=True)
        if self.appends:
            line += " " + " ".join(shlex.quote(v) for v in values)
        return line

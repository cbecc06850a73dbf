"""Render an Ollama TEMPLATE of the form kotune writes, as Go's text/template would.

The tests render the Modelfile kotune exports and compare it with kotune's own prompt;
Ollama is not installable here. Supported: literal text, ``{{ .Name }}``,
``{{ if .Name }}...{{ else }}...{{ end }}`` (nested), and ``{{-``/``-}}`` trimming. Anything
else raises, so a TEMPLATE using more than this subset fails the test instead of being
misread.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        lit = text[pos:m.start()]
        if m.group(1):
            lit = lit.rstrip()
        out.append(("text", lit))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", text[pos:]))
    return out


def render(template: str, values: dict[str, str]) -> str:
    tokens = _tokens(template)

    def field(expr: str) -> str:
        if not re.fullmatch(r"\.[A-Za-z]+", expr):
            raise ValueError(f"unsupported Go template expression: {expr!r}")
        return values.get(expr[1:], "")

    def block(i: int, stop: tuple[str, ...]) -> tuple[str, int, str]:
        out = []
        while i < len(tokens):
            kind, val = tokens[i]
            if kind == "text":
                out.append(val)
                i += 1
                continue
            if val in stop:
                return "".join(out), i, val
            if val.startswith("if "):
                cond = bool(field(val[3:].strip()))
                then, i, end = block(i + 1, ("else", "end"))
                other = ""
                if end == "else":
                    other, i, end = block(i + 1, ("end",))
                out.append(then if cond else other)
                i += 1
                continue
            out.append(field(val))
            i += 1
        if stop:
            raise ValueError(f"unterminated block (expected {stop})")
        return "".join(out), i, ""

    text, _, _ = block(0, ())
    return text

"""The final answer of a response: the last ``\\boxed{}``, "the answer is", GSM8K's ``####``, or the
last number; and the normalised gold. Plain Python, linear in the text (a response can be megabytes)."""

from __future__ import annotations

import re

METHODS = ("boxed", "answer_is", "gsm8k", "last_number", "none")

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_SPACE = re.compile(r"\\boxed +([^\s$]+)")
_ANSWER_IS = re.compile(r"(?:[Tt]he (?:final |correct )?answer is|[Ff]inal [Aa]nswer\s*:)\s*:?\s*")
_GSM8K = re.compile(r"####\s*")
_CALC = re.compile(r"<<[^<>\n]*>>")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_MAX_BOXED_TRIES = 32
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """Position of each ``{`` (from ``start`` on) -> its matching ``}``; one pass, escaped braces skipped."""
    close_of: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN.finditer(text, start):
        token = m.group(0)
        if token == "{":
            stack.append(m.start())
        elif token == "}":
            if stack:
                close_of[stack.pop()] = m.start()
    return close_of


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces balance.

    A truncated last box (the model ran out of tokens) does not count; an earlier complete one does.
    Linear in the text, so an enormous response cannot stall the caller.
    """
    opens = [m.end() - 1 for m in _BOXED.finditer(text)][-_MAX_BOXED_TRIES:]
    if opens:
        close_of = _closing_braces(text, opens[0])
        for pos in reversed(opens):
            if pos in close_of:
                return text[pos + 1 : close_of[pos]].strip()
    spaced = list(_BOXED_SPACE.finditer(text))
    if spaced:
        return spaced[-1].group(1).strip()
    return None


def _rest_of_line(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start : end if end >= 0 else len(text)]


def _clean_tail(answer: str) -> str:
    """Trim a sentence-style answer: what follows the sentence's end, final periods, enclosing ``$``."""
    answer = re.split(r"\.\s", answer.strip(), maxsplit=1)[0].strip()
    while answer.endswith("."):
        answer = answer[:-1].rstrip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def extract_answer(text: str) -> tuple[str | None, str]:
    """``(answer, method)``: the last balanced ``\\boxed{}``, else "The answer is ...", else GSM8K's
    ``#### N``, else the last number (a fallback that callers count), else ``(None, "none")``."""
    if not isinstance(text, str) or not text:
        return None, "none"
    boxed = last_boxed(text)
    if boxed:
        return boxed, "boxed"
    matches = list(_ANSWER_IS.finditer(text))
    for m in reversed(matches):
        answer = _clean_tail(_rest_of_line(text, m.end()))
        if answer:
            return answer, "answer_is"
    matches = list(_GSM8K.finditer(text))
    for m in reversed(matches):
        answer = _clean_tail(_rest_of_line(text, m.end())).replace(",", "")
        if answer:
            return answer, "gsm8k"
    numbers = _NUMBER.findall(_CALC.sub("", text))
    if numbers:
        return numbers[-1].replace(",", ""), "last_number"
    return None, "none"


def gold_answer(dataset: str, raw: str) -> str:
    """Normalise a gold answer: GSM8K ``... #### 1,234`` -> ``1234``; MATH-style text -> its last boxed
    content when it is a whole solution, else the stripped text."""
    raw = str(raw).strip()
    name = dataset.lower()
    if name.startswith("gsm8k") or "####" in raw:
        tail = raw.rsplit("####", 1)[-1] if "####" in raw else raw
        return tail.strip().replace(",", "")
    if "\\boxed" in raw or "\\fbox" in raw:
        boxed = last_boxed(raw)
        if boxed:
            return boxed
    return raw

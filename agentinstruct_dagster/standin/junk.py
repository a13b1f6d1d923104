"""Schema-valid junk for the stand-in's free strings: what a broken endpoint answers, so tests can show that the
pipeline's substance rules catch it. Enums, numbers, formats and code strings stay valid (junk must reach
the rules, not fail validation); junk strings carry no `[stand-in]` label.

- `digit_soup`: digits and dots, e.g. "2.1.1.1.1:2:222.109.0.133.318.17";
- `one_letter`: a lone capital letter;
- `prompt_echo`: the whole last user message;
- `source_copy`: the passage of the last user message (`passage`);
- `answer_equals_question`: ordinary strings, but in an object with an `answer` field the answer repeats the
  object's instruction (or question, task, request).
"""

from __future__ import annotations

import random
import re
import string
from typing import Any, Literal, get_args

# The stand-in's own vocabulary (profiles name these modes; the stand-in imports nothing of the pipeline, so its
# process starts without importing Dagster).
StandinJunk = Literal["none", "digit_soup", "one_letter", "prompt_echo", "source_copy", "answer_equals_question"]
StandinJudge = Literal["high", "low", "hashed"]
JUNK_MODES: tuple[str, ...] = get_args(StandinJunk)
JUDGE_MODES: tuple[str, ...] = get_args(StandinJudge)
QUESTION_FIELDS = ("instruction", "question", "task", "request")
# A label line of a prompt template: "Content:", "Passage (a debate):", "Suggestions to apply:".
LABEL_LINE = re.compile(r"^[A-Z][^\n]{0,80}:[ \t]*$", re.MULTILINE)
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def digit_soup(number: int) -> str:
    """10-18 groups of digits joined by dots and colons, chosen by `number`."""
    draw = random.Random(number)
    groups = [str(draw.choice((draw.randrange(10), draw.randrange(10), draw.randrange(1000)))) for _ in range(18)]
    separators = [draw.choice("..:") for _ in groups]
    count = 10 + number % 9
    return "".join(group + separator for group, separator in zip(groups[:count], separators, strict=False))[:-1]


def passage(message: str) -> str:
    """The passage a prompt quotes: its longest labelled section (the lines after a label line such as
    `Content:` up to the next label), without the closing paragraph of instructions that follows the last
    one; the whole message when it has no label line."""
    sections = LABEL_LINE.split(message)
    if len(sections) == 1:
        return message.strip()
    *quoted, last = sections[1:]
    closing = PARAGRAPH_BREAK.split(last.strip())
    last = "\n\n".join(closing[:-1]) if len(closing) > 1 else last
    return max([*quoted, last], key=lambda section: len(section.strip())).strip()


def junk_text(mode: str, message: str, number: int) -> str | None:
    """The junk for one free string (`number` is its hash), or None when the mode leaves strings alone."""
    if mode == "digit_soup":
        return digit_soup(number)
    if mode == "one_letter":
        return string.ascii_uppercase[number % 26]
    if mode == "prompt_echo":
        return message
    if mode == "source_copy":
        return passage(message)
    return None


def restated(item: dict[str, Any]) -> dict[str, Any]:
    """`answer_equals_question`: an object's `answer` set to its question field, if it has both."""
    asked = next((name for name in QUESTION_FIELDS if isinstance(item.get(name), str)), None)
    if asked is None or not isinstance(item.get("answer"), str):
        return item
    return {**item, "answer": item[asked]}

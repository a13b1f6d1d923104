"""Substance rules: does a row say something, or is it junk a schema cannot catch (digit soup, a lone letter,
the prompt or the source copied back, an answer that restates its question, an edit that changed nothing)?

Each rule is a `Rule` named after its block in `expectations/substance.yaml` (thresholds per skill, see
config/substance.py); a failure's detail carries the evidence: the numbers against the threshold, the
offending text shortened, the id it was compared with. Rows bring their context in `_`-prefixed keys that
`StageOutput.admit` drops before storage: `_answer` (the agent's validated answer), `_prompt` (the user
prompt sent), `_source` (the chunk or passage the agent worked from), `_previous_instruction` and
`_previous_answer` (refinement). Every check is linear in the length of the texts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel

from agentinstruct_dagster.config.substance import DegenerateText, EditDestroysItem, Substance
from agentinstruct_dagster.quality.rules import Row, Rule

WORD = re.compile(r"[^\W_]+")  # runs of letters and digits
LETTER = re.compile(r"[^\W\d_]")
SNIPPET_CHARS = 80
QUESTION_FIELDS = ("instruction", "question", "task", "request")
Shingles = set[tuple[str, ...]]


def words(text: str) -> list[str]:
    """Lowercased runs of letters and digits: punctuation and spacing do not count."""
    return WORD.findall(text.casefold())


def shingles(text: str, size: int) -> Shingles:
    """The set of `size`-word windows of a text (one window of all its words if it is shorter)."""
    tokens = words(text)
    if len(tokens) < size:
        return {tuple(tokens)} if tokens else set()
    return set(zip(*(tokens[offset:] for offset in range(size)), strict=False))


def coverage(part: Shingles, whole: Shingles) -> float:
    """Share of `whole`'s shingles that are also in `part`."""
    return len(part & whole) / len(whole) if whole else 0.0


def jaccard(first: Shingles, second: Shingles) -> float:
    union = len(first | second)
    return len(first & second) / union if union else 1.0


def similarity(first: str, second: str, size: int) -> float:
    """1.0 for texts equal once normalised, else the Jaccard similarity of their shingles."""
    if words(first) == words(second):
        return 1.0
    return jaccard(shingles(first, size), shingles(second, size))


def snippet(text: str) -> str:
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…")


def answer_strings(value: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(field name, path, text) of every string in a validated answer: nested models and list items included;
    list items are judged by their list's field name."""
    for name in type(value).model_fields:
        yield from _strings(getattr(value, name), name, f"{prefix}{name}")


def _strings(item: Any, name: str, path: str) -> Iterator[tuple[str, str, str]]:
    if isinstance(item, str):
        yield name, path, item
    elif isinstance(item, BaseModel):
        yield from answer_strings(item, f"{path}.")
    elif isinstance(item, list | tuple):
        for index, element in enumerate(item):
            yield from _strings(element, name, f"{path}[{index}]")


def answer_objects(value: Any) -> Iterator[BaseModel]:
    """The answer and every model nested in it."""
    if isinstance(value, BaseModel):
        yield value
        for name in type(value).model_fields:
            yield from answer_objects(getattr(value, name))
    elif isinstance(value, list | tuple):
        for element in value:
            yield from answer_objects(element)


def written(row: Row, fields: Sequence[str]) -> Iterator[tuple[str, str, str]]:
    """(field name, where, text) of what the agent wrote: the row's `fields` and the strings of `_answer`."""
    for field in fields:
        yield from _strings(row.get(field), field, field)
    answer = row.get("_answer")
    if isinstance(answer, BaseModel):
        yield from answer_strings(answer, f"{type(answer).__name__}.")


# degenerate_text


def degeneracy(field: str, text: str, settings: DegenerateText) -> str | None:
    """What makes one field's text degenerate (character soup, too few words, a repetition loop), or None."""
    if field in settings.exempt_fields:
        return None
    characters = sum(not character.isspace() for character in text)
    if characters >= settings.soup_min_chars:
        share = len(LETTER.findall(text)) / characters
        if share < settings.min_letter_share:
            return f"letter share {share:.2f} < {settings.min_letter_share} over {characters} characters"
    alphabetic = sum(len(LETTER.findall(token)) >= settings.word_min_letters for token in text.split())
    needed = settings.words_needed(field)
    if alphabetic < needed:
        return f"{alphabetic} word(s) of {settings.word_min_letters}+ letters, `{field}` needs {needed}"
    tokens, size = words(text), settings.ngram_words
    if len(tokens) < max(settings.repetition_min_words, size):
        return None
    grams = Counter(zip(*(tokens[offset:] for offset in range(size)), strict=False))
    gram, count = grams.most_common(1)[0]
    share = count / sum(grams.values())
    if share > settings.max_ngram_share:
        return f"{' '.join(gram)!r} is {share:.2f} of its {size}-word n-grams > {settings.max_ngram_share}"
    distinct = len(set(tokens)) / len(tokens)
    if distinct < settings.min_distinct_word_ratio:
        return f"{distinct:.2f} distinct words per word < {settings.min_distinct_word_ratio} over {len(tokens)}"
    return None


def degenerate_answer(value: BaseModel, thresholds: Substance) -> str | None:
    """Why a validated agent answer is degenerate (first string field at fault, recursively), or None: the
    engine's `accept` check, so it asks once more with a fresh seed."""
    settings = thresholds.degenerate_text
    if not settings.enabled:
        return None
    for field, path, text in answer_strings(value):
        problem = degeneracy(field, text, settings)
        if problem:
            return f"degenerate_text: {path}: {problem}: {snippet(text)}"
    return None


def acceptor(thresholds: Substance) -> Callable[[BaseModel], str | None]:
    """`LLMRequest.accept` for a skill's thresholds."""

    def accept(value: BaseModel) -> str | None:
        return degenerate_answer(value, thresholds)

    return accept


def degenerate_text(thresholds: Substance, fields: Sequence[str] = ()) -> Rule:
    settings = thresholds.degenerate_text

    def check(row: Row) -> str | None:
        for field, where, text in written(row, fields):
            problem = degeneracy(field, text, settings)
            if problem:
                return f"{where}: {problem}: {snippet(text)}"
        return None

    return Rule("degenerate_text", check)


# transformation


def near_copy_of_source(thresholds: Substance) -> Rule:
    """The row's text, or any string of the agent's answer (a table cell, a page title), is the source."""
    settings = thresholds.near_copy_of_source

    def check(row: Row) -> str | None:
        if row.get("agent") in settings.except_agents:
            return None
        size = settings.shingle_words
        source = shingles(row["_source"], size)
        for text in dict.fromkeys(text.strip() for _, _, text in written(row, ("text",))):
            score = jaccard(shingles(text, size), source)
            if score >= settings.max_jaccard:
                return (
                    f"Jaccard {score:.2f} of word {size}-grams with source {row.get('parent_id')} "
                    f">= {settings.max_jaccard}: {snippet(text)}"
                )
        return None

    return Rule("near_copy_of_source", check)


def much_shorter_than_source(thresholds: Substance) -> Rule:
    settings = thresholds.much_shorter_than_source

    def check(row: Row) -> str | None:
        source_words = len(words(row["_source"]))
        if source_words < settings.min_source_words:
            return None
        needed = settings.min_ratio * min(source_words, settings.source_words_cap)
        output_words = len(words(row["text"]))
        if output_words >= needed:
            return None
        return (
            f"{output_words} words, {output_words / source_words:.2f} of source {row.get('parent_id')}'s "
            f"{source_words}; needs {settings.min_ratio} of min({source_words}, {settings.source_words_cap}) = "
            f"{needed:.0f}: {snippet(row['text'])}"
        )

    return Rule("much_shorter_than_source", check)


def echoes_prompt(thresholds: Substance, fields: Sequence[str] = ()) -> Rule:
    settings = thresholds.echoes_prompt

    def check(row: Row) -> str | None:
        size, limit = settings.shingle_words, settings.max_coverage
        prompt = shingles(row["_prompt"], size)
        if len(prompt) < settings.min_prompt_shingles:
            return None
        around_source = prompt - shingles(row.get("_source") or "", size)
        for _, where, text in written(row, fields):
            output = shingles(text, size)
            whole = coverage(output, prompt)
            if whole < limit:
                continue
            around = coverage(output, around_source) if around_source else whole
            if around >= limit:
                return (
                    f"{where} repeats {whole:.2f} of the prompt's word {size}-grams and {around:.2f} of those "
                    f"outside its source (>= {limit}): {snippet(text)}"
                )
        return None

    return Rule("echoes_prompt", check)


# seed and refinement


def instruction_copies_passage(thresholds: Substance) -> Rule:
    settings = thresholds.instruction_copies_passage

    def check(row: Row) -> str | None:
        size = settings.shingle_words
        passage = shingles(row["_source"], size)
        if len(passage) < settings.min_passage_shingles:
            return None
        covered = coverage(shingles(row["instruction"], size), passage)
        if covered < settings.max_coverage:
            return None
        return (
            f"the instruction repeats {covered:.2f} of the word {size}-grams of passage {row.get('parent_id')} "
            f"(>= {settings.max_coverage}): {snippet(row['instruction'])}"
        )

    return Rule("instruction_copies_passage", check)


def instruction_copies_answer(thresholds: Substance) -> Rule:
    settings = thresholds.instruction_copies_answer

    def check(row: Row) -> str | None:
        answer = row["answer"]
        if len(words(answer)) < settings.min_answer_words:
            return None
        size = settings.shingle_words
        answer_shingles = shingles(answer, size)
        contained = coverage(shingles(row["instruction"], size), answer_shingles)
        if contained < settings.max_containment:
            return None
        return (
            f"{contained:.2f} of the answer's word {size}-grams are in the instruction "
            f"(>= {settings.max_containment}): answer {snippet(answer)}"
        )

    return Rule("instruction_copies_answer", check)


def answer_equals_instruction(thresholds: Substance) -> Rule:
    """The row's answer against its instruction, and inside the agent's answer every `answer` field against
    its object's question field (worked examples, web tasks)."""
    settings = thresholds.answer_equals_instruction

    def pairs(row: Row) -> Iterator[tuple[str, str, str]]:
        yield "answer vs instruction", row["answer"], row["instruction"]
        for item in answer_objects(row.get("_answer")):
            asked = next((name for name in QUESTION_FIELDS if isinstance(getattr(item, name, None), str)), None)
            answered = getattr(item, "answer", None)
            if asked and isinstance(answered, str):
                yield f"{type(item).__name__}.answer vs .{asked}", answered, getattr(item, asked)

    def check(row: Row) -> str | None:
        for label, answer, question in pairs(row):
            score = similarity(answer, question, settings.shingle_words)
            if score >= settings.max_similarity:
                return f"{label}: similarity {score:.2f} >= {settings.max_similarity}: {snippet(answer)}"
        return None

    return Rule("answer_equals_instruction", check)


def edit_is_no_op(thresholds: Substance) -> Rule:
    settings = thresholds.edit_is_no_op

    def check(row: Row) -> str | None:
        size, limit = settings.shingle_words, settings.max_similarity
        asked = similarity(row["instruction"], row["_previous_instruction"], size)
        answered = similarity(row["answer"], row["_previous_answer"], size)
        if asked < limit or answered < limit:
            return None
        return (
            f"instruction {asked:.2f} and answer {answered:.2f} similar to round {row.get('parent_id')} "
            f"(>= {limit}): {snippet(row['instruction'])}"
        )

    return Rule("edit_is_no_op", check)


def content_words(text: str, settings: EditDestroysItem) -> set[str]:
    return {
        word
        for word in words(text)
        if len(word) >= settings.content_word_min_letters and word not in settings.function_words
    }


def edit_destroys_item(thresholds: Substance) -> Rule:
    settings = thresholds.edit_destroys_item

    def check(row: Row) -> str | None:
        instruction, previous = row["instruction"], row["_previous_instruction"]
        new_words, old_words = len(words(instruction)), len(words(previous))
        if old_words >= settings.min_previous_words and new_words < settings.min_length_ratio * old_words:
            return (
                f"the instruction shrank to {new_words / old_words:.2f} of round {row.get('parent_id')}'s "
                f"({new_words} of {old_words} words) < {settings.min_length_ratio}: {snippet(instruction)}"
            )
        context = " ".join((row["_source"], previous, row["_previous_answer"]))
        if content_words(instruction, settings) & content_words(context, settings):
            return None
        return (
            f"the instruction shares no content word with the passage and round {row.get('parent_id')}'s "
            f"instruction and answer: {snippet(instruction)}"
        )

    return Rule("edit_destroys_item", check)


# rules per stage


def _enabled(thresholds: Substance, rules: list[Rule]) -> list[Rule]:
    return [rule for rule in rules if getattr(thresholds, rule.name).enabled]


def transformation_rules(thresholds: Substance, *, prose: bool) -> list[Rule]:
    """Rules of a transformed text; its length is compared with the source's only for prose (not for tables,
    APIs, pages)."""
    rules = [degenerate_text(thresholds), echoes_prompt(thresholds), near_copy_of_source(thresholds)]
    if prose:
        rules.append(much_shorter_than_source(thresholds))
    return _enabled(thresholds, rules)


def seed_rules(thresholds: Substance, fields: Sequence[str] = ("instruction", "answer")) -> list[Rule]:
    return _enabled(
        thresholds,
        [
            degenerate_text(thresholds, fields),
            echoes_prompt(thresholds, fields),
            instruction_copies_passage(thresholds),
            answer_equals_instruction(thresholds),
            instruction_copies_answer(thresholds),
        ],
    )


def refinement_rules(thresholds: Substance) -> list[Rule]:
    return [
        *seed_rules(thresholds, ("instruction", "answer", "suggestions")),
        *_enabled(thresholds, [edit_is_no_op(thresholds), edit_destroys_item(thresholds)]),
    ]

"""The one topic grammar: type names, and the patterns subscriptions match them with.

Type and topic names are dot-separated words of letters, digits, ``_``, ``-`` or ``:``.
Patterns follow AMQP topic semantics over those words: ``*`` matches exactly one word, ``#``
zero or more (``auth.user.*`` matches ``auth.user.created``; ``auth.#`` matches ``auth``,
``auth.login`` and ``auth.user.created``). :func:`topic_matches` decides a match;
:func:`pattern_regex` is the same grammar as a regular expression, for brokers that take one.
"""

from __future__ import annotations

import functools
import re

from eventbus.errors import ConfigurationError

__all__ = ["is_pattern", "pattern_regex", "topic_matches", "validate_type_name"]

_TYPE_NAME = re.compile(r"^[A-Za-z0-9_\-:]+(\.[A-Za-z0-9_\-:]+)*$")


def validate_type_name(name: str, what: str = "event type") -> str:
    """Check a type or topic name: dot-separated words of letters, digits, ``_``, ``-`` or ``:``.

    Dots separate the words that subscription patterns (``auth.user.*``, ``auth.#``) match.
    """
    if not isinstance(name, str) or not _TYPE_NAME.match(name):
        raise ConfigurationError(
            f"invalid {what} {name!r}: use dot-separated words of letters, digits, '_', '-' or ':'"
            " (for example 'UserRegistered' or 'auth.user.created')"
        )
    return name


def is_pattern(target: str) -> bool:
    """True when ``target`` contains a ``*`` or ``#`` word."""
    return any(word in ("*", "#") for word in target.split("."))


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, topic: str) -> bool:
    """AMQP topic matching of ``topic`` against ``pattern`` (``*`` one word, ``#`` any number)."""
    if pattern == topic:
        return True
    return _match(tuple(pattern.split(".")), tuple(topic.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # Positions in the pattern reachable after consuming each word (an NFA walk; no backtracking).
    states = _close(pattern, {0})
    for word in words:
        following: set[int] = set()
        for i in states:
            if i < len(pattern) and pattern[i] == "#":
                following.add(i)  # '#' swallows this word and may swallow more
            elif i < len(pattern) and pattern[i] in ("*", word):
                following.add(i + 1)
        states = _close(pattern, following)
        if not states:
            return False
    return len(pattern) in states


def _close(pattern: tuple[str, ...], states: set[int]) -> set[int]:
    """Add the positions reachable by letting a '#' match zero words."""
    stack = list(states)
    while stack:
        i = stack.pop()
        if i < len(pattern) and pattern[i] == "#" and i + 1 not in states:
            states.add(i + 1)
            stack.append(i + 1)
    return states


def pattern_regex(pattern: str, *, exclude_prefix: str = "") -> str:
    """A regular expression matching the names :func:`topic_matches` matches with ``pattern``.

    Names starting with ``exclude_prefix`` (a broker's internal topics) never match.
    """
    words: list[str] = []
    for word in pattern.split("."):
        if not (word == "#" and words and words[-1] == "#"):  # '#.#' is '#'
            words.append(word)
    guard = f"(?!{re.escape(exclude_prefix)})" if exclude_prefix else ""
    if words == ["#"]:
        return rf"^{guard}.+\Z"
    out, sep = "", ""
    for i, word in enumerate(words):
        if word == "#":
            out += r"(?:\.[^.]+)*" if i else r"(?:[^.]+\.)*"
            sep = "" if not i else r"\."
            continue
        out += sep + (r"[^.]+" if word == "*" else re.escape(word))
        sep = r"\."
    return rf"^{guard}{out}\Z"

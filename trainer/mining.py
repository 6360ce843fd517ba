"""Mining of convention-formation preference pairs from stored chat sessions.

Within one conversation a thing is often first described at length ("the small red ceramic mug with
the chipped handle") and later re-mentioned with a shorter phrase ("the chipped mug"). Each such
re-mention gives one preference pair: the real message is the chosen text, and the same message with
the long first mention copied in is the rejected text. Detection is lexical, without a parser, a
part-of-speech tagger or a coreference model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]

# Only these roles contain conversation text, so system prompts and tool output are skipped.
SPEAKER_ROLES = frozenset({"user", "assistant"})

DETERMINERS = frozenset(
    {"the", "a", "an", "my", "your", "our", "their", "his", "her", "its", "this", "that", "these", "those"}
)
# A re-mention of a known thing is definite, so "a mug" after "the small red mug" is not one.
DEFINITE_DETERMINERS = DETERMINERS - {"a", "an"}

# Prepositions that usually open a post-modifier of the noun ("the oak bookshelf by the window"),
# so they stay inside a noun phrase.
PHRASE_PREPOSITIONS = frozenset(
    {"with", "of", "by", "near", "beside", "behind", "under", "beneath", "above", "below", "in", "inside"}
)
# "with" and "of" often take a bare noun ("a set of six mugs"). The other phrase prepositions open a
# post-modifier mostly before a determiner ("the lamp in the corner"), and without one they more
# often belong to the verb ("wrap the skillet in towels").
BARE_NOUN_PREPOSITIONS = frozenset({"with", "of"})

# Words that end a noun phrase. Verbs are not tagged, so besides function words this holds only
# frequent verbs. An unlisted verb stays inside a phrase, so long phrases are also read as ending
# before it, and a short mention that contains it fails the content-word match.
CLAUSE_BREAKERS = frozenset(
    {
        # copulas, auxiliaries and modals
        "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does", "did",
        "will", "would", "can", "could", "should", "may", "might", "must", "shall",
        "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't", "didn't", "won't", "can't", "couldn't",
        "shouldn't", "wouldn't",
        # conjunctions, relative and question words
        "and", "or", "but", "nor", "so", "because", "when", "while", "if", "then", "than", "as", "since",
        "until", "unless", "although", "though", "where", "whereas", "whether", "that", "which", "who",
        "whom", "whose", "what", "how", "why",
        # prepositions that usually attach to the verb, not to the noun
        "to", "on", "at", "for", "from", "into", "onto", "about", "over", "through", "after", "before",
        "during", "against", "between", "across", "around", "toward", "towards", "up", "down", "off",
        "out", "via", "per", "without",
        # pronouns and their contractions
        "i", "me", "you", "he", "him", "she", "we", "us", "they", "them", "it", "myself", "yourself",
        "itself", "themselves", "it's", "that's", "there's", "i'm", "i'll", "i'd", "we're", "we'll",
        "you're", "they're", "let's",
        # adverbs
        "not", "also", "too", "just", "really", "there", "here", "now", "still", "already", "again",
        "please", "maybe", "probably", "always", "never", "today", "tomorrow", "yesterday", "soon",
        "instead", "anyway", "yet", "ever", "even", "both", "all", "either",
        # frequent verbs
        "go", "goes", "went", "gone", "need", "needs", "sit", "sits", "sat", "stay", "stays", "look",
        "looks", "belong", "belongs", "fit", "fits", "hold", "holds", "keep", "keeps", "kept", "get",
        "gets", "got", "seem", "seems", "stand", "stands", "hang", "hangs", "live", "lives", "want",
        "wants", "put", "puts", "move", "moves", "moved", "take", "takes", "took", "make", "makes",
        "made", "bring", "brings", "brought", "think", "know", "like", "likes", "come", "comes", "came",
    }
)  # fmt: skip

# "last week" or "next month" after a noun is a time adjunct of the clause, not part of the phrase.
TIME_ADJUNCT_STARTS = frozenset({"last", "next", "every"})
TIME_NOUNS = frozenset(
    {"time", "day", "night", "morning", "evening", "week", "weekend", "month", "year", "summer", "winter"}
)

# Heads too vague to name a thing: "the one", "the other", "that stuff".
VAGUE_HEADS = frozenset({"one", "ones", "thing", "things", "stuff", "it", "this", "that", "other", "others", "same"})

# Nouns that name an amount of something else, so "a pair of garden shears" can be re-mentioned as
# "the shears" as well as "the pair".
QUANTITY_NOUNS = frozenset(
    {"pair", "set", "stack", "pile", "heap", "bunch", "bundle", "roll", "couple", "collection", "row"}
)

MAX_REMENTION_WORDS = 4
"""Maximum number of words after the determiner in a later, shorter mention."""

_WORD_PATTERN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_LEADING_DETERMINER = re.compile(r"^([^\W_]+)(?=\s)")
# A first mention copied into a message of the other speaker keeps pointing at the same owner.
_OTHER_SPEAKER_POSSESSIVES = {"my": "your", "our": "your", "your": "my"}


@dataclass(frozen=True)
class Mention:
    """A noun phrase in one message of a transcript.

    ``start`` and ``end`` are character offsets in that message's content. ``word_offset`` is the
    position of the phrase's first word, counted in words from the start of the conversation over
    user and assistant messages only.
    """

    text: str
    message_index: int
    start: int
    end: int
    word_offset: int


@dataclass(frozen=True)
class Remention:
    """A long first mention of a thing and a shorter later mention of the same thing."""

    first: Mention
    later: Mention


@dataclass(frozen=True)
class PreferencePair:
    """A minimal pair: one message as written (chosen) and with one mention swapped (rejected).

    ``kind`` "remention": the short re-mention is preferred over repeating the long first mention.
    ``kind`` "first_mention": the full first mention is preferred over using the short form too early.

    ``prompt`` contains the transcript messages before that message, and ``role`` is its role, which
    is "user" when the partner wrote the re-mention. ``mention_start`` is where the swapped mention begins,
    the same character offset in ``chosen`` and ``rejected``.
    """

    prompt: list[Message]
    chosen: str
    rejected: str
    role: str
    first_mention: str
    remention: str
    kind: str = "remention"
    mention_start: int = 0


# Session transcripts


def session_transcript(turns: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Rebuild one conversation from a session's stored turns, in order.

    Each turn has the request ``messages`` and the ``response`` message. Clients that resend the
    whole conversation add only their new messages, and clients that send only new messages add all
    of them except a system message that is already in the transcript. A turn whose messages repeat
    the transcript without its last response (a regenerated response) replaces that response. A turn
    whose response is None adds only its messages. The response of a turn marked ``continue_final_message``
    is joined to the partial assistant message that ends its request.
    """
    transcript: list[Message] = []
    for turn in turns:
        messages = [_plain_message(message) for message in turn["messages"]]
        if _is_regeneration(transcript, messages):
            transcript.pop()
        transcript.extend(_new_messages(transcript, messages))
        response = turn.get("response")
        if response is None:
            continue
        reply = _plain_message(response, default_role="assistant")
        if turn.get("continue_final_message") and transcript and transcript[-1]["role"] == "assistant":
            # The response continues the partial assistant message that ends the request.
            transcript[-1] = {**transcript[-1], "content": transcript[-1]["content"] + reply["content"]}
        else:
            transcript.append(reply)
    return transcript


def _plain_message(message: Mapping[str, Any], default_role: str = "user") -> Message:
    return {"role": str(message.get("role") or default_role), "content": str(message.get("content") or "")}


def _same_message(left: Message, right: Message) -> bool:
    # Some clients strip the whitespace around stored responses before resending them.
    return left["role"] == right["role"] and left["content"].strip() == right["content"].strip()


def _starts_with(messages: Sequence[Message], prefix: Sequence[Message]) -> bool:
    if len(messages) < len(prefix):
        return False
    pairs = zip(messages[: len(prefix)], prefix, strict=True)
    return all(_same_message(message, expected) for message, expected in pairs)


def _is_regeneration(transcript: Sequence[Message], messages: Sequence[Message]) -> bool:
    # NOTE: a client that sends only new messages and repeats its first message exactly on the
    # second turn looks the same, and loses the first response.
    if len(transcript) < 2 or transcript[-1]["role"] != "assistant":
        return False
    return not _starts_with(messages, transcript) and _starts_with(messages, transcript[:-1])


def _new_messages(transcript: Sequence[Message], messages: list[Message]) -> list[Message]:
    if _starts_with(messages, transcript):
        return messages[len(transcript) :]
    system_prompts = {message["content"].strip() for message in transcript if message["role"] == "system"}
    return [
        message
        for message in messages
        if not (message["role"] == "system" and message["content"].strip() in system_prompts)
    ]


# Words


@dataclass(frozen=True)
class _Word:
    key: str
    message_index: int
    start: int
    end: int
    offset: int
    follows_break: bool
    """True for a message's first word and after punctuation or a line break."""


def _tokenize(transcript: Sequence[Message]) -> list[_Word]:
    words: list[_Word] = []
    for message_index, message in enumerate(transcript):
        if message["role"] not in SPEAKER_ROLES:
            continue
        words.extend(_tokenize_message(message["content"], message_index, len(words)))
    return words


def _tokenize_message(content: str, message_index: int, first_offset: int) -> list[_Word]:
    words: list[_Word] = []
    previous_end: int | None = None
    for match in _WORD_PATTERN.finditer(content):
        gap = "" if previous_end is None else content[previous_end : match.start()]
        follows_break = previous_end is None or gap.strip() != "" or "\n" in gap
        key = match.group().lower().replace("’", "'")
        words.append(_Word(key, message_index, match.start(), match.end(), first_offset + len(words), follows_break))
        previous_end = match.end()
    return words


def _word_forms(key: str) -> frozenset[str]:
    """Return the word and its possible singular forms, so "mugs", "boxes" and "berries" match."""
    if key.endswith("'s"):
        key = key[:-2]
    forms = {key}
    if key.endswith("s") and len(key) > 3:
        forms.add(key[:-1])
    if key.endswith("es") and len(key) > 4:
        forms.add(key[:-2])
    if key.endswith("ies") and len(key) > 4:
        forms.add(key[:-3] + "y")
    return frozenset(forms)


def _forms_of(keys: Iterable[str]) -> frozenset[str]:
    return frozenset(form for key in keys for form in _word_forms(key))


def _matches_any(key: str, forms: frozenset[str]) -> bool:
    return not _word_forms(key).isdisjoint(forms)


def _is_stopword(key: str) -> bool:
    return key in DETERMINERS or key in PHRASE_PREPOSITIONS or key in CLAUSE_BREAKERS


# Long first mentions


@dataclass(frozen=True)
class _Phrase:
    """One reading of a long noun phrase: its word span, its head nouns and its content words."""

    start: int
    end: int
    """Index after the phrase's last word, in the word list."""
    head_forms: frozenset[str]
    content_forms: frozenset[str]

    @property
    def length(self) -> int:
        return self.end - self.start


def _starts_time_adjunct(words: Sequence[_Word], index: int) -> bool:
    if words[index].key not in TIME_ADJUNCT_STARTS or index + 1 == len(words):
        return False
    return words[index + 1].key in TIME_NOUNS and not words[index + 1].follows_break


def _continues_phrase(words: Sequence[_Word], index: int) -> bool:
    word = words[index]
    if word.follows_break or word.key in CLAUSE_BREAKERS or _starts_time_adjunct(words, index):
        return False
    previous = words[index - 1].key
    if previous in PHRASE_PREPOSITIONS and previous not in BARE_NOUN_PREPOSITIONS:
        return word.key in DETERMINERS
    if word.key in DETERMINERS:
        return previous in PHRASE_PREPOSITIONS
    return True


def _phrase_end(words: Sequence[_Word], start: int) -> int:
    """Return the index after the longest run of phrase words that follows the determiner at ``start``."""
    end = start + 1
    while end < len(words) and _continues_phrase(words, end):
        end += 1
    return end


def _trim_phrase_end(words: Sequence[_Word], start: int, end: int, max_words: int) -> int:
    # A trailing preposition or determiner belongs to the next phrase ("the mug in it").
    while end > start + 1 and words[end - 1].key in PHRASE_PREPOSITIONS | DETERMINERS:
        end -= 1
    # A run that is too long has most likely taken in an unlisted verb, so drop post-modifiers
    # ("with the chipped handle") from the right until it fits.
    while end - start > max_words:
        prepositions = [i for i in range(start + 2, end) if words[i].key in PHRASE_PREPOSITIONS]
        if not prepositions:
            break
        end = prepositions[-1]
    return end


def _head_indexes(words: Sequence[_Word], start: int, end: int) -> list[int]:
    """Return the head noun's index, plus the counted noun's index after a quantity noun."""
    first_preposition = next((i for i in range(start + 1, end) if words[i].key in PHRASE_PREPOSITIONS), end)
    head = first_preposition - 1
    if words[head].key not in QUANTITY_NOUNS or first_preposition == end:
        return [head]
    if words[first_preposition].key != "of":
        return [head]
    complement_end = next((i for i in range(first_preposition + 1, end) if words[i].key in PHRASE_PREPOSITIONS), end)
    return [head, complement_end - 1]


def _phrase_reading(words: Sequence[_Word], start: int, end: int, head_indexes: Sequence[int]) -> _Phrase:
    heads = [words[i].key for i in head_indexes if words[i].key not in VAGUE_HEADS]
    content = [word.key for word in words[start + 1 : end] if not _is_stopword(word.key)]
    return _Phrase(start, end, _forms_of(heads), _forms_of(content))


def _long_phrase_readings(words: Sequence[_Word], start: int, min_words: int, max_words: int) -> list[_Phrase]:
    """Return the ways to read the phrase at ``start`` as a long mention, the full phrase first.

    An unlisted verb right after the head noun ("a small red mug arrived") becomes the phrase's last
    word, so each earlier word may be the real head, and the phrase then ends at that word.
    """
    end = _trim_phrase_end(words, start, _phrase_end(words, start), max_words)
    if end - start < 2:
        return []
    head_indexes = _head_indexes(words, start, end)
    if words[head_indexes[0]].key in VAGUE_HEADS:
        return []
    readings = [_phrase_reading(words, start, end, head_indexes)]
    readings += [_phrase_reading(words, start, index + 1, [index]) for index in range(head_indexes[0] - 1, start, -1)]
    return [reading for reading in readings if min_words <= reading.length <= max_words]


def _long_phrases(words: Sequence[_Word], min_words: int, max_words: int) -> list[_Phrase]:
    phrases = [
        reading
        for index, word in enumerate(words)
        if word.key in DETERMINERS
        for reading in _long_phrase_readings(words, index, min_words, max_words)
    ]
    return sorted(phrases, key=lambda phrase: phrase.end)


# Later, shorter mentions


def _is_bare_noun_word(word: _Word) -> bool:
    return not word.follows_break and not _is_stopword(word.key)


def _short_mention_ends(words: Sequence[_Word], start: int) -> list[int]:
    """Return the possible end indexes of a short mention at ``start``, longest first."""
    ends: list[int] = []
    end = start + 1
    while end < len(words) and end - start <= MAX_REMENTION_WORDS and _is_bare_noun_word(words[end]):
        end += 1
        ends.append(end)
    return ends[::-1]


def _names_same_thing(words: Sequence[_Word], start: int, end: int, phrase: _Phrase, min_shortening: int) -> bool:
    if phrase.length - (end - start) < min_shortening:
        return False
    head = words[end - 1].key
    if head in VAGUE_HEADS or not _matches_any(head, phrase.head_forms):
        return False
    if not all(_matches_any(word.key, phrase.content_forms) for word in words[start + 1 : end]):
        return False
    # "the mug with the chipped handle" or "the mug handle" repeats or extends the long phrase,
    # so "the mug" inside it is no shortened re-mention.
    following = words[end : _phrase_end(words, start)]
    return not any(_matches_any(word.key, phrase.content_forms) for word in following)


def _closest_match(
    words: Sequence[_Word],
    start: int,
    phrases: Sequence[_Phrase],
    rementioned_starts: Set[int],
    min_shortening: int,
    max_distance: int,
) -> tuple[int, _Phrase] | None:
    """Find the closest earlier long phrase that a short mention at ``start`` can re-mention.

    Phrases that start with a re-mention ("the skillet in the sink" after "the heavy cast iron
    skillet") are skipped, because they name a known thing instead of describing it.
    """
    ends = _short_mention_ends(words, start)
    for phrase in reversed(phrases):
        if phrase.end > start or phrase.start in rementioned_starts:
            continue
        if start - phrase.end > max_distance:
            return None
        for end in ends:
            if _names_same_thing(words, start, end, phrase, min_shortening):
                return end, phrase
    return None


def _mention(transcript: Sequence[Message], words: Sequence[_Word], start: int, end: int) -> Mention:
    first, last = words[start], words[end - 1]
    content = transcript[first.message_index]["content"]
    return Mention(content[first.start : last.end], first.message_index, first.start, last.end, first.offset)


def find_rementions(
    transcript: Sequence[Message],
    *,
    min_first_words: int = 3,
    max_first_words: int = 10,
    min_shortening: int = 2,
    min_distance_words: int = 5,
    max_distance_words: int = 400,
) -> list[Remention]:
    """Find later, shorter mentions of things that were first described with a long noun phrase.

    A long mention starts at a determiner and runs until punctuation or a clause-breaking word,
    keeping post-modifiers such as "with the chipped handle" or "by the window". A later mention is
    a definite determiner and 1 to 4 words that all occur in the long phrase, and its last word is
    the long phrase's head noun (simple plurals match). Word counts include the
    determiner, and the distance is the number of words between the end of the long mention and
    the start of the later one. Each later mention pairs with the closest earlier long phrase that
    it matches and is dropped when that phrase is outside the distance limits. A long phrase that
    starts with such a re-mention is no first mention. Only user and assistant messages are read.
    The result is in transcript order.
    """
    words = _tokenize(transcript)
    phrases = _long_phrases(words, min_first_words, max_first_words)
    rementions: list[Remention] = []
    rementioned_starts: set[int] = set()
    for start, word in enumerate(words):
        if word.key not in DEFINITE_DETERMINERS:
            continue
        match = _closest_match(words, start, phrases, rementioned_starts, min_shortening, max_distance_words)
        if match is None:
            continue
        end, phrase = match
        rementioned_starts.add(start)
        if start - phrase.end < min_distance_words:
            continue
        first = _mention(transcript, words, phrase.start, phrase.end)
        rementions.append(Remention(first, _mention(transcript, words, start, end)))
    return rementions


# Preference pairs


def _replacement_text(first_text: str, later_text: str, other_speaker: bool) -> str:
    """Return the first mention's text to put in place of the later mention.

    A leading "a" or "an" becomes "the", and a leading possessive changes person when the later
    mention is in the other speaker's message (``other_speaker``). The first letter takes the case of
    the later mention's first letter.
    """

    def replace_determiner(match: re.Match[str]) -> str:
        determiner = match.group(1).lower()
        if determiner in ("a", "an"):
            return "the"
        if other_speaker:
            return _OTHER_SPEAKER_POSSESSIVES.get(determiner, determiner)
        return determiner

    # NOTE: possessives after the determiner ("the box with my tools") keep their person.
    text = _LEADING_DETERMINER.sub(replace_determiner, first_text, count=1)
    if later_text[:1].isupper():
        return text[:1].upper() + text[1:]
    return text


def _preference_pair(transcript: Sequence[Message], remention: Remention) -> PreferencePair:
    later = remention.later
    message = transcript[later.message_index]
    content = message["content"]
    other_speaker = transcript[remention.first.message_index]["role"] != message["role"]
    replacement = _replacement_text(remention.first.text, later.text, other_speaker)
    return PreferencePair(
        prompt=[dict(previous) for previous in transcript[: later.message_index]],
        chosen=content,
        rejected=content[: later.start] + replacement + content[later.end :],
        role=message["role"],
        first_mention=remention.first.text,
        remention=later.text,
        mention_start=later.start,
    )


def _first_mention_pair(transcript: Sequence[Message], remention: Remention) -> PreferencePair:
    """Builds the pair that prefers the full first mention over the short form used before it was established."""
    first = remention.first
    message = transcript[first.message_index]
    content = message["content"]
    short = remention.later.text
    short = short[:1].upper() + short[1:] if first.text[:1].isupper() else short[:1].lower() + short[1:]
    return PreferencePair(
        prompt=[dict(previous) for previous in transcript[: first.message_index]],
        chosen=content,
        rejected=content[: first.start] + short + content[first.end :],
        role=message["role"],
        first_mention=first.text,
        remention=remention.later.text,
        kind="first_mention",
        mention_start=first.start,
    )


def build_preference_pairs(transcript: Sequence[Message], rementions: Iterable[Remention]) -> list[PreferencePair]:
    """Builds one re-mention pair per re-mention, then one first-mention pair per first mention.

    The first-mention pair uses the shortest re-mention found for that first mention as the too-early form.
    """
    rementions = list(rementions)
    pairs = [_preference_pair(transcript, remention) for remention in rementions]
    shortest: dict[Mention, Remention] = {}
    for remention in rementions:
        known = shortest.get(remention.first)
        if known is None or len(remention.later.text.split()) < len(known.later.text.split()):
            shortest[remention.first] = remention
    pairs += [_first_mention_pair(transcript, remention) for remention in shortest.values()]
    return pairs


def mine_pairs(sessions_turns: Iterable[Sequence[Mapping[str, Any]]]) -> list[PreferencePair]:
    """Mine preference pairs from each session's stored turns, without repeating a (chosen, rejected) pair."""
    return mine_transcripts(session_transcript(turns) for turns in sessions_turns)


def mine_transcripts(transcripts: Iterable[Sequence[Message]]) -> list[PreferencePair]:
    """Mine preference pairs from whole conversations, without repeating a (chosen, rejected) pair."""
    pairs: list[PreferencePair] = []
    seen: set[tuple[str, str]] = set()
    for transcript in transcripts:
        for pair in build_preference_pairs(transcript, find_rementions(transcript)):
            if (pair.chosen, pair.rejected) not in seen:
                seen.add((pair.chosen, pair.rejected))
                pairs.append(pair)
    return pairs

"""Tests for transcript rebuilding, re-mention detection and preference pair mining."""

from __future__ import annotations

import json
from importlib.resources import files

from trainer.mining import (
    Remention,
    build_preference_pairs,
    find_rementions,
    mine_pairs,
    session_transcript,
)

MUG = "the small red ceramic mug with the chipped handle"


def message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def user_transcript(*contents: str) -> list[dict[str, str]]:
    """Interleave the user messages with short assistant replies, as a live demo would."""
    transcript: list[dict[str, str]] = []
    for content in contents:
        transcript.append(message("user", content))
        transcript.append(message("assistant", "OK."))
    return transcript


def later_texts(rementions: list[Remention]) -> list[str]:
    return [remention.later.text for remention in rementions]


# session_transcript


def test_transcript_growing_prefix_deduplicated() -> None:
    system = message("system", "Be brief.")
    first_question = message("user", "Where is the mug?")
    first_answer = message("assistant", "On the shelf.")
    second_question = message("user", "Which shelf?")
    second_answer = message("assistant", "The top one.")
    turns = [
        {"messages": [system, first_question], "response": first_answer},
        {"messages": [system, first_question, first_answer, second_question], "response": second_answer},
    ]

    transcript = session_transcript(turns)

    assert transcript == [system, first_question, first_answer, second_question, second_answer]


def test_transcript_new_messages_only() -> None:
    system = message("system", "Be brief.")
    first_question = message("user", "Where is the mug?")
    first_answer = message("assistant", "On the shelf.")
    second_question = message("user", "Which shelf?")
    second_answer = message("assistant", "The top one.")
    turns = [
        {"messages": [system, first_question], "response": first_answer},
        {"messages": [system, second_question], "response": second_answer},
    ]

    transcript = session_transcript(turns)

    assert transcript == [system, first_question, first_answer, second_question, second_answer]


def test_transcript_repeated_user_message_kept() -> None:
    turns = [
        {"messages": [message("user", "Start.")], "response": message("assistant", "One.")},
        {"messages": [message("user", "Next.")], "response": message("assistant", "Two.")},
        {"messages": [message("user", "Next.")], "response": message("assistant", "Three.")},
    ]

    transcript = session_transcript(turns)

    contents = [entry["content"] for entry in transcript]
    assert contents == ["Start.", "One.", "Next.", "Two.", "Next.", "Three."]


def test_transcript_regenerated_response_replaced() -> None:
    question = message("user", "Name a colour.")
    turns = [
        {"messages": [question], "response": message("assistant", "Red.")},
        {"messages": [question], "response": message("assistant", "Blue.")},
    ]

    transcript = session_transcript(turns)

    assert transcript == [question, message("assistant", "Blue.")]


def test_transcript_regenerated_late_response_replaced() -> None:
    system = message("system", "Be brief.")
    first_question = message("user", "Name a colour.")
    first_answer = message("assistant", "Red.")
    second_question = message("user", "Another one.")
    history = [system, first_question, first_answer, second_question]
    turns = [
        {"messages": history[:2], "response": first_answer},
        {"messages": history, "response": message("assistant", "Green.")},
        {"messages": history, "response": message("assistant", "Blue.")},
    ]

    transcript = session_transcript(turns)

    assert transcript == [*history, message("assistant", "Blue.")]


def test_transcript_ignores_whitespace_changes() -> None:
    question = message("user", "Name a colour.")
    follow_up = message("user", "Another one.")
    turns = [
        {"messages": [question], "response": message("assistant", "Red.\n")},
        {"messages": [question, message("assistant", "Red."), follow_up], "response": None},
    ]

    transcript = session_transcript(turns)

    assert transcript == [question, message("assistant", "Red.\n"), follow_up]


def test_transcript_drops_extra_message_keys() -> None:
    turns = [
        {
            "messages": [{"role": "user", "content": "Hi.", "name": "sam"}],
            "response": message("assistant", "Hello."),
        }
    ]

    transcript = session_transcript(turns)

    assert transcript[0] == message("user", "Hi.")


# find_rementions


def test_finds_chipped_mug_remention() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.",
        "Later today I will wash the chipped mug by hand.",
    )

    rementions = find_rementions(transcript)

    assert len(rementions) == 1
    assert rementions[0].first.text == MUG
    assert rementions[0].later.text == "the chipped mug"
    assert rementions[0].later.message_index == 2


def test_remention_offsets_point_into_message() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the mug by hand.")

    later = find_rementions(transcript)[0].later
    content = transcript[later.message_index]["content"]

    assert content[later.start : later.end] == "the mug"


def test_remention_word_offset_counts_conversation() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the mug by hand.")

    remention = find_rementions(transcript)[0]

    assert remention.first.word_offset == 2
    # 14 words in the first message, "OK." in the reply, then "Later today I will wash".
    assert remention.later.word_offset == 20


def test_rejects_vague_one_remention() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the one by hand.")

    assert find_rementions(transcript) == []


def test_rejects_determiner_pronoun_remention() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash that one and this.")

    assert find_rementions(transcript) == []


def test_rejects_too_close_remention() -> None:
    transcript = [message("user", f"I found {MUG} and then the mug broke.")]

    assert find_rementions(transcript) == []


def test_accepts_remention_at_min_distance() -> None:
    transcript = [message("user", f"I found {MUG} and then, sadly, just today the mug broke.")]

    assert later_texts(find_rementions(transcript)) == ["the mug"]


def test_rejects_same_length_remention() -> None:
    transcript = user_transcript(
        "I bought a small red mug at the market.", "Tomorrow I will give the small red mug away."
    )

    assert find_rementions(transcript) == []


def test_rejects_one_word_shorter_remention() -> None:
    transcript = user_transcript("I bought a small red mug at the market.", "Tomorrow I will give the red mug away.")

    assert find_rementions(transcript) == []


def test_rejects_remention_beyond_max_distance() -> None:
    filler = " ".join(["word"] * 30)
    transcript = user_transcript(f"Please put {MUG} on the shelf.", filler, "Wash the mug.")

    assert find_rementions(transcript, max_distance_words=20) == []


def test_rejects_new_content_word() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the blue mug.")

    assert find_rementions(transcript) == []


def test_rejects_head_from_post_modifier() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will glue the handle back.")

    assert find_rementions(transcript) == []


def test_rejects_repeated_long_phrase() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.", "Later today I will wash the mug with the chipped handle."
    )

    assert find_rementions(transcript) == []


def test_rejects_noun_compound_remention() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will glue the mug handle.")

    assert find_rementions(transcript) == []


def test_rejects_indefinite_later_mention() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will buy a mug.")

    assert find_rementions(transcript) == []


def test_matches_plural_remention() -> None:
    transcript = user_transcript(
        "I packed a set of six blue enamel mugs yesterday.", "Tonight I will unpack the mugs again."
    )

    assert later_texts(find_rementions(transcript)) == ["the mugs"]


def test_matches_quantity_noun_complement() -> None:
    transcript = user_transcript(
        "There is a pair of long-handled garden shears here.", "Tonight I will sharpen the shears."
    )

    assert later_texts(find_rementions(transcript)) == ["the shears"]


def test_matches_case_insensitively() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.", "Later today I will wash it. The Chipped Mug is dirty."
    )

    assert later_texts(find_rementions(transcript)) == ["The Chipped Mug"]


def test_ignores_system_messages() -> None:
    transcript = [
        message("system", f"The user owns {MUG}."),
        *user_transcript("Later today I will wash the mug."),
    ]

    assert find_rementions(transcript) == []


def test_ignores_tool_messages() -> None:
    transcript = [
        message("tool", f"Found {MUG} in stock."),
        *user_transcript("Later today I will wash the mug."),
    ]

    assert find_rementions(transcript) == []


def test_prefers_closest_long_mention() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.",
        "No, I meant the big blue enamel mug from the cupboard.",
        "Later today I will wash the mug by hand.",
    )

    rementions = find_rementions(transcript)

    assert len(rementions) == 1
    assert rementions[0].first.text == "the big blue enamel mug"


def test_skips_restatement_as_first_mention() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.",
        "No, I meant the small red ceramic mug from the cupboard.",
        "Later today I will wash the mug by hand.",
    )

    rementions = find_rementions(transcript)

    assert [remention.first.text for remention in rementions] == [MUG, MUG]


def test_truncates_phrase_before_unlisted_verb() -> None:
    transcript = user_transcript("A small red ceramic mug arrived today.", "Later today I will wash the mug.")

    assert find_rementions(transcript)[0].first.text == "A small red ceramic mug"


def test_skips_rementions_as_first_mentions() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.",
        "Later today I will wrap the mug in the old towels.",
        "Tomorrow morning I will unwrap the mug again.",
    )

    rementions = find_rementions(transcript)

    assert [remention.first.text for remention in rementions] == [MUG, MUG]


def test_reports_each_later_span_once() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.",
        f"Also, I found {MUG} yesterday.",
        "Later today I will wash the mug by hand.",
    )

    rementions = find_rementions(transcript)
    later_spans = [(remention.later.message_index, remention.later.start) for remention in rementions]

    assert later_spans == [(4, 24)]


def test_drops_time_adjunct_from_phrase() -> None:
    transcript = user_transcript(
        "I bought a new laptop with a large screen last week.", "Since then the laptop overheats."
    )

    assert find_rementions(transcript)[0].first.text == "a new laptop with a large screen"


# build_preference_pairs and mine_pairs


def test_pair_texts_and_prompt() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the chipped mug by hand.")

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.prompt == transcript[:2]
    assert pair.chosen == "Later today I will wash the chipped mug by hand."
    assert pair.rejected == f"Later today I will wash {MUG} by hand."
    assert pair.first_mention == MUG
    assert pair.remention == "the chipped mug"
    assert pair.chosen[pair.mention_start :].startswith("the chipped mug")
    assert pair.rejected[pair.mention_start :].startswith(MUG)


def test_rejected_text_uses_definite_article() -> None:
    transcript = user_transcript(
        "I bought a small red ceramic mug at the market.", "Later today I will wash the mug by hand."
    )

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.rejected == "Later today I will wash the small red ceramic mug by hand."


def test_rejected_text_an_becomes_the() -> None:
    transcript = user_transcript(
        "I bought an old oak bookshelf at the market.", "Later today I will paint the bookshelf white."
    )

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.rejected == "Later today I will paint the old oak bookshelf white."


def test_rejected_text_keeps_sentence_capital() -> None:
    transcript = user_transcript("I bought a small red ceramic mug at the market.", "It was cheap. The mug is lovely.")

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.rejected == "It was cheap. The small red ceramic mug is lovely."


def test_rejected_text_lowercases_first_mention() -> None:
    transcript = user_transcript("A small red ceramic mug arrived today.", "Later today I will wash the mug by hand.")

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.rejected == "Later today I will wash the small red ceramic mug by hand."


def test_rejected_text_changes_possessive_person() -> None:
    transcript = [
        message("user", "I want to repaint my old oak bookshelf this weekend, if it is dry."),
        message("assistant", "Sand the bookshelf first, then paint it."),
    ]

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.rejected == "Sand your old oak bookshelf first, then paint it."


def test_rejected_text_keeps_own_possessive() -> None:
    transcript = user_transcript(
        "I want to repaint my old oak bookshelf this weekend.", "Then I will sand the bookshelf."
    )

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.rejected == "Then I will sand my old oak bookshelf."


def test_pairs_across_user_and_assistant() -> None:
    transcript = [
        message("user", f"Please find {MUG} for me, if you can."),
        message("assistant", "I found the chipped mug in the cupboard, behind the plates."),
        message("user", "Great, thanks. Now please wash the mug and the plates."),
    ]

    pairs = remention_pairs(build_preference_pairs(transcript, find_rementions(transcript)))

    assert [pair.role for pair in pairs] == ["assistant", "user"]
    assert pairs[0].rejected == f"I found {MUG} in the cupboard, behind the plates."
    assert pairs[1].rejected == f"Great, thanks. Now please wash {MUG} and the plates."


def test_pair_prompt_keeps_system_message() -> None:
    system = message("system", "Be brief.")
    transcript = [
        system,
        *user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the mug."),
    ]

    pair = build_preference_pairs(transcript, find_rementions(transcript))[0]

    assert pair.prompt[0] == system


def test_mine_pairs_deduplicates_across_sessions() -> None:
    turns = [
        {
            "messages": [message("user", f"Please put {MUG} on the shelf.")],
            "response": message("assistant", "OK."),
        },
        {
            "messages": [message("user", "Later today I will wash the mug.")],
            "response": message("assistant", "OK."),
        },
    ]

    pairs = mine_pairs([turns, turns])

    assert [pair.kind for pair in pairs] == ["remention", "first_mention"]


def test_mine_pairs_keeps_distinct_pairs() -> None:
    first_session = [
        {
            "messages": [message("user", f"Please put {MUG} on the shelf.")],
            "response": message("assistant", "OK."),
        },
        {
            "messages": [message("user", "Later today I will wash the mug.")],
            "response": message("assistant", "OK."),
        },
    ]
    second_session = [
        {
            "messages": [message("user", f"Please put {MUG} on the shelf.")],
            "response": message("assistant", "OK."),
        },
        {
            "messages": [message("user", "Later today I will dry the mug.")],
            "response": message("assistant", "OK."),
        },
    ]

    pairs = remention_pairs(mine_pairs([first_session, second_session]))

    assert [pair.chosen for pair in pairs] == [
        "Later today I will wash the mug.",
        "Later today I will dry the mug.",
    ]


# Demo sessions


def test_demo_sessions_have_three_rementions() -> None:
    demo = json.loads((files("clients") / "data" / "demo_sessions.json").read_text(encoding="utf-8"))

    assert demo["partner_id"] == "demo-partner"
    assert len(demo["sessions"]) == 4
    for session in demo["sessions"]:
        rementions = find_rementions(user_transcript(*session["user_turns"]))
        assert 4 <= len(session["user_turns"]) <= 6, session["session_id"]
        assert len(rementions) >= 3, session["session_id"]


def remention_pairs(pairs: list) -> list:
    return [pair for pair in pairs if pair.kind == "remention"]


def test_session_yields_both_pair_kinds() -> None:
    transcript = user_transcript(f"Please put {MUG} on the shelf.", "Later today I will wash the chipped mug.")

    pairs = build_preference_pairs(transcript, find_rementions(transcript))
    by_kind = {pair.kind: pair for pair in pairs}

    assert by_kind["remention"].chosen == "Later today I will wash the chipped mug."
    assert by_kind["remention"].rejected == f"Later today I will wash {MUG}."
    assert by_kind["first_mention"].chosen == f"Please put {MUG} on the shelf."
    assert by_kind["first_mention"].rejected == "Please put the chipped mug on the shelf."


def test_first_mention_pair_uses_shortest_form() -> None:
    transcript = user_transcript(
        f"Please put {MUG} on the shelf.",
        "Later today I will wash the chipped mug.",
        "Then I will dry the mug as well.",
    )

    pairs = build_preference_pairs(transcript, find_rementions(transcript))
    first_mention = [pair for pair in pairs if pair.kind == "first_mention"]

    assert [pair.rejected for pair in first_mention] == ["Please put the mug on the shelf."]

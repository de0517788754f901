"""Chat-export parsers (WhatsApp, Telegram, Discord), example building and import-chat.

The sample exports in tests/data/chat_exports/ are written by hand in each app's format,
with the oddities real exports have: system lines, media placeholders, links, multi-line
messages, 12- and 24-hour clocks, several date orders, text entities, and malformed lines.
"""

from __future__ import annotations

import json
import stat
from datetime import datetime
from pathlib import Path

import pytest

from core.personas import Persona
from tests.test_cli import personabot
from training.chat_import import (
    ChatImportError,
    ParsedChat,
    build_dataset,
    parse_export,
    personal_persona,
)
from training.chat_import.records import URL
from training.dailydialog import DatasetError
from training.sft_data import detect_format, load_examples, read_chat_examples

EXPORTS = Path(__file__).parent / "data" / "chat_exports"


def texts(chat: ParsedChat) -> list[tuple[str, str]]:
    return [(m.author, m.text) for m in chat.messages]


# -- WhatsApp ----------------------------------------------------------------------------------


def test_whatsapp_android_12_hour_clock() -> None:
    chat = parse_export(EXPORTS / "whatsapp_android_12h.txt")
    assert chat.format == "whatsapp"
    assert chat.speakers() == ["Alex", "Sam"]
    first = chat.messages[0]
    assert (first.author, first.time, first.line) == ("Alex", datetime(2023, 12, 30, 21, 3), 2)
    assert chat.messages[-2].time == datetime(2023, 12, 31, 23, 58)  # 11:58 PM
    # Continuation lines belong to the message above them.
    assert ("Sam", "10 works\nbring snacks pls\nand the thermos") in texts(chat)
    # The link is cut out of its message; the link-only message disappears.
    assert ("Alex", "maybe around 10? here's the route") in texts(chat)
    assert not any(URL.search(m.text) for m in chat.messages)
    assert dict(chat.dropped) == {"system": 1, "media": 1, "links": 2, "deleted": 1}
    assert all("omitted" not in m.text and "deleted" not in m.text for m in chat.messages)


def test_whatsapp_iphone_24_hour_clock_with_direction_marks() -> None:
    chat = parse_export(EXPORTS / "whatsapp_ios_24h.txt")
    assert chat.speakers() == ["Anna", "Ben", "Sam"]
    assert chat.messages[0].time == datetime(2023, 12, 31, 21, 16, 10)
    assert chat.messages[-1].time == datetime(2024, 1, 1, 10, 5)  # 01.01.24: day first
    assert ("Sam", "finished it last night\nthe ending was wild") in texts(chat)
    assert ("Sam", "happy new year") in texts(chat)  # "<This message was edited>" removed
    # Encryption notice, group creation and missed call; image and attachment.
    assert chat.dropped["system"] == 3 and chat.dropped["media"] == 2
    assert all("\u200e" not in m.text and "\u200e" not in m.author for m in chat.messages)


@pytest.mark.parametrize(
    "line",
    [
        "31/12/2023, 21:15 - Sam: hello there",
        "31.12.23, 21:15 - Sam: hello there",
        "31-12-2023 21:15 - Sam: hello there",
        "2023-12-31, 21:15 - Sam: hello there",
        "12/31/23, 9:15 PM - Sam: hello there",
        "12/31/23, 9:15\u202fpm - Sam: hello there",
        "31/12/23, 9:15 p. m. - Sam: hello there",
        "[31.12.23, 21:15:00] Sam: hello there",
        "[12/31/23, 9:15:00 PM] Sam: hello there",
    ],
)
def test_whatsapp_date_and_time_styles(tmp_path: Path, line: str) -> None:
    export = tmp_path / "chat.txt"
    export.write_text(f"{line}\n", encoding="utf-8")
    chat = parse_export(export)
    assert texts(chat) == [("Sam", "hello there")]
    assert chat.messages[0].time == datetime(2023, 12, 31, 21, 15)


def test_whatsapp_ambiguous_dates_follow_the_clock(tmp_path: Path) -> None:
    us = tmp_path / "us.txt"
    us.write_text("01/02/24, 9:15 AM - Sam: hi\n", encoding="utf-8")
    assert parse_export(us).messages[0].time == datetime(2024, 1, 2, 9, 15)  # month first
    eu = tmp_path / "eu.txt"
    eu.write_text("01/02/24, 09:15 - Sam: hi\n", encoding="utf-8")
    assert parse_export(eu).messages[0].time == datetime(2024, 2, 1, 9, 15)  # day first


@pytest.mark.parametrize(
    ("name", "line", "words"),
    [
        ("whatsapp_malformed.txt", 3, "not a date"),
        ("whatsapp_bad_header.txt", 2, "not a WhatsApp message line"),
    ],
)
def test_whatsapp_malformed_lines_are_named(name: str, line: int, words: str) -> None:
    with pytest.raises(ChatImportError, match=words) as caught:
        parse_export(EXPORTS / name)
    assert caught.value.line == line
    assert f"{name}, line {line}:" in str(caught.value)
    assert "header has month" not in str(caught.value)  # no message text in errors


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("hello\n31/12/2023, 21:15 - Sam: hi\n", 1, "does not start with a date"),
        ("12/31/23, 9:15 PM - Sam: hi\n12/31/23, 13:15 PM - Sam: hi\n", 2, "12-hour clock"),
        ("31/12/2023, 21:15 - Sam: hi\n12/31/2023, 21:16 - Sam: hi\n", 2, "mix day-first"),
        ("12/31/2023, 21:15 - Sam: hi\n31/12/2023, 21:16 - Sam: hi\n", 2, "mix day-first"),
    ],
)
def test_whatsapp_other_malformed_files(
    tmp_path: Path, content: str, line: int, words: str
) -> None:
    export = tmp_path / "chat.txt"
    export.write_text(content, encoding="utf-8")
    with pytest.raises(ChatImportError, match=words) as caught:
        parse_export(export, "whatsapp")
    assert caught.value.line == line


def test_whatsapp_system_line_with_a_colon_is_not_a_message(tmp_path: Path) -> None:
    export = tmp_path / "chat.txt"
    export.write_text(
        '31/12/2023, 21:15 - Ann changed the subject from "Trip" to "Trip: day 2"\n'
        "31/12/2023, 21:16 - Ann left\n"
        "31/12/2023, 21:17 - Sam: ok\n",
        encoding="utf-8",
    )
    chat = parse_export(export)
    assert texts(chat) == [("Sam", "ok")] and chat.dropped["system"] == 2


# -- Telegram ----------------------------------------------------------------------------------


def test_telegram_text_entities_media_and_service_messages() -> None:
    chat = parse_export(EXPORTS / "telegram_result.json")
    assert chat.format == "telegram"
    assert texts(chat) == [
        ("Mia", "Gym tomorrow?"),
        ("Sam", "only if we finally try the blue route, see"),  # link entity dropped
        ("Mia", "this one?"),  # a photo's caption stays
        ("Sam", "that one. the guide says it's a 6a"),  # a text_link keeps its words
        ("Mia", "@sam 9am at the gym?"),
        ("Sam", "9 is perfect"),
    ]
    assert chat.messages[0].time == datetime(2023, 12, 30, 18, 1)
    assert chat.messages[0].line == 19  # where the message's object starts
    assert dict(chat.dropped) == {"system": 1, "links": 1, "media": 2, "forwarded": 1}


def test_telegram_malformed_message_names_its_line() -> None:
    with pytest.raises(ChatImportError, match="'text' must be a string") as caught:
        parse_export(EXPORTS / "telegram_malformed.json")
    assert caught.value.line == 37


def test_telegram_invalid_json_and_whole_account_exports(tmp_path: Path) -> None:
    broken = tmp_path / "result.json"
    broken.write_text('{"messages": [\n {"type": "message",}\n]}', encoding="utf-8")
    with pytest.raises(ChatImportError, match="invalid JSON") as caught:
        parse_export(broken)
    assert caught.value.line == 2
    account = tmp_path / "account.json"
    account.write_text('{"about": "", "chats": {"list": []}}', encoding="utf-8")
    with pytest.raises(ChatImportError, match="export the one chat"):
        parse_export(account, "telegram")


# -- Discord -----------------------------------------------------------------------------------


def test_discord_json_export() -> None:
    chat = parse_export(EXPORTS / "discord_channel.json")
    assert chat.format == "discord"
    assert texts(chat) == [
        ("Leo", "anyone up for games tonight? :pog:"),
        ("Sam", "always. usual server?"),
        ("Leo", "yes, same one. link:"),
        ("Sam", "cool, see you at 9"),
    ]
    assert chat.messages[1].time is not None and chat.messages[1].time.minute == 2
    assert dict(chat.dropped) == {"system": 2, "media": 1, "links": 1}


def test_discord_csv_export_with_multi_line_content() -> None:
    chat = parse_export(EXPORTS / "discord_channel.csv")
    assert texts(chat) == [
        ("leo", "anyone up for games tonight?"),
        ("sam_k", "always.\nusual server?"),
        ("leo", "yes, same one"),
        ("sam_k", "cool, see you at 9"),
    ]
    assert [m.line for m in chat.messages] == [2, 3, 6, 7]
    assert dict(chat.dropped) == {"media": 1, "links": 1}


def test_discord_csv_malformed_rows(tmp_path: Path) -> None:
    with pytest.raises(ChatImportError, match="not a date") as caught:
        parse_export(EXPORTS / "discord_malformed.csv")
    assert caught.value.line == 5
    short = tmp_path / "short.csv"
    short.write_text(
        "AuthorID,Author,Date,Content,Attachments,Reactions\n"
        "1,leo,2023-12-30T18:01:00+00:00,hi,,\n"
        "1,leo,2023-12-30T18:02:00+00:00\n",
        encoding="utf-8",
    )
    with pytest.raises(ChatImportError, match="has 3 fields") as caught:
        parse_export(short)
    assert caught.value.line == 3
    headless = tmp_path / "headless.csv"
    headless.write_text("who,when\nleo,today\n", encoding="utf-8")
    with pytest.raises(ChatImportError, match="lacks the column"):
        parse_export(headless)


# -- examples ----------------------------------------------------------------------------------


def test_examples_make_the_speaker_the_assistant() -> None:
    dataset = build_dataset(parse_export(EXPORTS / "whatsapp_android_24h.txt"), "sam")
    assert dataset.speaker == "Sam"
    # Silences of more than 6 hours split the chat into three conversations.
    assert dataset.conversations == 3
    assert dataset.turns == 18 and dataset.speaker_turns == 9
    assert len(dataset.examples) == 9
    first = dataset.examples[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[1]["content"] == "did you see the match?"
    assert first[2]["content"] == "not yet, no spoilers"
    assert "Several people" not in first[0]["content"]  # two people: no name prefixes
    second = dataset.examples[1]["messages"]
    # Consecutive messages by one author are one turn; earlier turns are the history.
    assert second[-2] == {"role": "user", "content": "ok ok\nit was close though"}
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user", "assistant"]
    # A new conversation starts without the previous one's turns.
    assert dataset.examples[2]["messages"][1]["content"] == "so?"
    assert dataset.examples[2]["source"] == "whatsapp_android_24h.txt:7"


def test_group_chat_examples_name_the_speakers() -> None:
    dataset = build_dataset(parse_export(EXPORTS / "whatsapp_ios_24h.txt"), "Sam")
    messages = dataset.examples[0]["messages"]
    assert "Several people are talking" in messages[0]["content"]
    assert messages[1]["content"] == (
        "Anna: Did everyone finish the novel?\nBen: Almost, two chapters left"
    )
    assert messages[-1]["content"] == "finished it last night\nthe ending was wild"


def test_unknown_speaker_lists_names_only() -> None:
    chat = parse_export(EXPORTS / "telegram_result.json")
    with pytest.raises(ChatImportError) as caught:
        build_dataset(chat, "Zoe")
    message = str(caught.value)
    assert "'Mia', 'Sam'" in message
    assert not any(m.text in message for m in chat.messages)


def test_summary_never_holds_message_text() -> None:
    chat = parse_export(EXPORTS / "whatsapp_ios_24h.txt")
    summary = json.dumps(build_dataset(chat, "Sam").summary())
    assert not any(m.text in summary for m in chat.messages)
    assert "Anna" not in summary and "Ben" not in summary


def test_chat_datasets_are_read_by_the_training_pipeline(tmp_path: Path) -> None:
    dataset = build_dataset(parse_export(EXPORTS / "discord_channel.json"), "sam")
    path = tmp_path / "sam.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in dataset.examples) + "\n")
    assert detect_format(path) == "chat"
    examples = load_examples(path, "train")
    assert [e.reply for e in examples] == ["always. usual server?", "cool, see you at 9"]
    assert examples[0].messages[0].role == "system"
    with pytest.raises(DatasetError, match="--persona does not apply"):
        load_examples(path, "train", persona=dataset_persona())
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(dataset.examples[0]) + "\n" + '{"messages": [{"role": "user"}]}\n')
    with pytest.raises(DatasetError, match=r"broken.jsonl, line 2: message 0"):
        read_chat_examples(broken)


def dataset_persona() -> Persona:
    return personal_persona()


# -- the command -------------------------------------------------------------------------------


def test_import_chat_command(tmp_path: Path, model_cache_dir: Path) -> None:
    export = EXPORTS / "whatsapp_android_12h.txt"
    done = personabot(["import-chat", str(export), "--speaker", "SAM"], tmp_path, model_cache_dir)
    assert done.returncode == 0, done.stderr
    output = tmp_path / "data" / "datasets" / "whatsapp-android-12h-sam.jsonl"
    assert f"Wrote {output}" in done.stdout
    assert "Examples: 4" in done.stdout
    assert "Dropped: system 1, media 1, links 2, deleted 1, forwarded 0, empty 0" in done.stdout
    assert stat.S_IMODE(output.stat().st_mode) == 0o600  # private chats: owner only
    chat = parse_export(export)
    assert not any(m.text in done.stdout + done.stderr for m in chat.messages)
    assert len(read_chat_examples(output)) == 4

    unknown = personabot(
        ["import-chat", str(export), "--speaker", "Kim"], tmp_path, model_cache_dir
    )
    assert unknown.returncode == 2
    assert "Speakers: 'Alex', 'Sam'." in unknown.stderr

    malformed = personabot(
        ["import-chat", str(EXPORTS / "whatsapp_malformed.txt"), "--speaker", "Sam"],
        tmp_path,
        model_cache_dir,
    )
    assert malformed.returncode == 2
    assert "whatsapp_malformed.txt, line 3:" in malformed.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["import-chat"],
        ["persona"],
        ["persona", "add-adapter"],
        ["persona", "list"],
        ["persona", "remove"],
    ],
    ids=" ".join,
)
def test_new_commands_have_help(command: list[str], tmp_path: Path, model_cache_dir: Path) -> None:
    done = personabot([*command, "--help"], tmp_path, model_cache_dir)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout

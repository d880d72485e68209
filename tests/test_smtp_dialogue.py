"""The SMTP dialogue splitter: bytes of both sides in, in whatever pieces they arrive, commands, message
data and whole replies out, each reply paired with what it answers."""

from __future__ import annotations

import pytest

from harness.smtp.dialogue import (
    NEED_DATA,
    PAUSED,
    Answer,
    AuthAnswer,
    Chunk,
    ClientEvent,
    Command,
    Connected,
    Dialogue,
    DialogueError,
    EndOfMessage,
    MessageData,
    Wait,
)


def client_events(dialogue: Dialogue) -> list[ClientEvent | Wait]:
    """Every client event up to the first wait, and the wait."""
    events: list[ClientEvent | Wait] = []
    while not isinstance(event := dialogue.next_client_event(), Wait):
        events.append(event)
    return [*events, event]


def answer(dialogue: Dialogue) -> Answer:
    got = dialogue.next_server_event()
    assert isinstance(got, Answer), got
    return got


def greeted(**options: bool) -> Dialogue:
    dialogue = Dialogue(**options)
    dialogue.receive_server(b"220 mx ready\r\n")
    assert isinstance(answer(dialogue).answers, Connected)
    return dialogue


def test_pipelined_commands_are_split_and_each_reply_answers_its_own() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nRS")
    mail, rcpt, rcpt2, wait = client_events(dialogue)
    assert wait is NEED_DATA
    assert isinstance(mail, Command) and isinstance(rcpt, Command) and isinstance(rcpt2, Command)
    assert [mail.text, rcpt.text, rcpt2.text] == ["MAIL FROM:<a@b>", "RCPT TO:<c@d>", "RCPT TO:<e@f>"]
    assert (mail.pipelined, rcpt.pipelined) == (False, True)
    assert (mail.start, mail.end, rcpt.start) == (0, 17, 17)
    dialogue.receive_client(b"ET\r\n")
    (rset, _) = client_events(dialogue)
    assert isinstance(rset, Command) and rset.verb == "RSET"
    dialogue.receive_server(b"250 sender ok\r\n250 rcpt ok\r\n550 no such user\r\n250 reset\r\n")
    answers = [answer(dialogue) for _ in range(4)]
    assert [a.answers for a in answers] == [mail, rcpt, rcpt2, rset]
    assert [a.reply.code for a in answers] == [250, 250, 550, 250]
    assert dialogue.next_server_event() is NEED_DATA and dialogue.waiting == ()


def test_a_multi_line_reply_split_across_reads_is_one_reply() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"EHLO a.example\r\n")
    (ehlo, _) = client_events(dialogue)
    for piece in (b"250-mx.exa", b"mple\r\n250-PIPE", b"LINING\r", b"\n250 CHUNKING"):
        dialogue.receive_server(piece)
        assert dialogue.next_server_event() is NEED_DATA
    dialogue.receive_server(b"\r\n")
    reply = answer(dialogue)
    assert reply.answers == ehlo
    assert reply.reply.lines == ("250-mx.example", "250-PIPELINING", "250 CHUNKING")
    assert reply.reply.raw == b"250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    assert (reply.start, reply.end) == (14, 14 + len(reply.reply.raw))


def test_a_reply_nobody_asked_for_answers_nothing() -> None:
    dialogue = greeted()
    dialogue.receive_server(b"421 4.4.2 idle too long\r\n")
    assert answer(dialogue).answers is None


def test_data_waits_for_354_and_lines_that_look_like_commands_are_message() -> None:
    dialogue = greeted()
    body = b"Subject: x\r\n\r\nQUIT\r\nRSET\r\n..leading dot\r\nhello\n.\nstill message\r\n"
    dialogue.receive_client(b"DATA\r\n" + body + b".\r\nQUIT\r\n")
    data, wait = client_events(dialogue)
    assert isinstance(data, Command) and data.verb == "DATA"
    assert wait is PAUSED  # a server that says 503 takes the rest as commands
    dialogue.receive_server(b"354 go ahead\r\n")
    assert answer(dialogue).answers == data
    piece, end, quit_, _ = client_events(dialogue)
    assert isinstance(piece, MessageData) and piece.raw == body
    assert isinstance(end, EndOfMessage) and end.message == body and end.raw == b".\r\n"
    assert isinstance(quit_, Command) and quit_.verb == "QUIT" and quit_.pipelined
    dialogue.receive_server(b"250 queued\r\n221 bye\r\n")
    assert [answer(dialogue).answers for _ in range(2)] == [end, quit_]


def test_a_refused_data_leaves_the_client_speaking_commands() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"DATA\r\nNOOP\r\n")
    client_events(dialogue)
    dialogue.receive_server(b"503 5.5.1 no recipients\r\n")
    answer(dialogue)
    noop, _ = client_events(dialogue)
    assert isinstance(noop, Command) and noop.verb == "NOOP"


def test_a_message_arriving_in_pieces_ends_only_at_crlf_dot_crlf() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"DATA\r\n")
    client_events(dialogue)
    dialogue.receive_server(b"354 go\r\n")
    answer(dialogue)
    seen = bytearray()
    for piece in (b"line one\r\n.", b"\r", b"\n"):
        dialogue.receive_client(piece)
        for event in client_events(dialogue):
            if isinstance(event, MessageData):
                seen += event.raw
            elif isinstance(event, EndOfMessage):
                assert event.message == b"line one\r\n" == bytes(seen)
                return
    pytest.fail("the message never ended")


def test_bdat_chunks_are_taken_by_size_whatever_they_hold() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"BDAT 12\r\nQUIT\r\n.\r\nDATBDAT 3 LAST\r\nab")
    events = client_events(dialogue)
    command, chunk, command2, wait = events
    assert isinstance(command, Command) and isinstance(chunk, Chunk)
    assert chunk.raw == b"QUIT\r\n.\r\nDAT" and chunk.command == command and not chunk.last
    assert isinstance(command2, Command) and command2.text == "BDAT 3 LAST" and wait is NEED_DATA
    dialogue.receive_client(b"c")
    last, _ = client_events(dialogue)
    assert isinstance(last, Chunk) and last.raw == b"abc" and last.last
    dialogue.receive_server(b"250 12 octets\r\n250 3 octets\r\n")
    # The chunk, not its command line, is what the reply answers.
    assert [answer(dialogue).answers for _ in range(2)] == [chunk, last]


def test_after_starttls_the_rest_is_opaque() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"STARTTLS\r\n\x16\x03\x01\x02\x00binary")
    starttls, wait = client_events(dialogue)
    assert wait is PAUSED
    dialogue.receive_server(b"220 go ahead\r\n\x16\x03\x03\x00\x7abinary")
    reply = answer(dialogue)
    assert reply.answers == starttls and reply.tls and dialogue.encrypted
    assert dialogue.next_client_event() is NEED_DATA and dialogue.next_server_event() is NEED_DATA
    assert dialogue.unread == (11, 11)


def test_inside_tls_drops_what_was_sent_in_clear_and_goes_on() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"STARTTLS\r\nRSET injected\r\n")
    client_events(dialogue)
    dialogue.receive_server(b"220 go ahead\r\n")
    answer(dialogue)
    assert dialogue.inside_tls() == b"RSET injected\r\n"
    dialogue.receive_client(b"EHLO a\r\n")
    ehlo, _ = client_events(dialogue)
    assert isinstance(ehlo, Command) and ehlo.text == "EHLO a"


def test_a_transcript_that_shows_tls_goes_on_after_starttls() -> None:
    dialogue = greeted(tls_visible=True)
    dialogue.receive_client(b"STARTTLS\r\nEHLO a\r\n")
    client_events(dialogue)
    dialogue.receive_server(b"220 go ahead\r\n")
    assert answer(dialogue).tls and not dialogue.encrypted
    ehlo, _ = client_events(dialogue)
    assert isinstance(ehlo, Command) and ehlo.text == "EHLO a"


def test_a_refused_starttls_is_no_tls() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"STARTTLS\r\nQUIT\r\n")
    client_events(dialogue)
    dialogue.receive_server(b"454 4.7.0 TLS not available\r\n")
    assert not answer(dialogue).tls and not dialogue.encrypted
    quit_, _ = client_events(dialogue)
    assert isinstance(quit_, Command) and quit_.verb == "QUIT"


def test_auth_continuation_lines_are_answers_while_the_server_says_334() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"AUTH LOGIN\r\ncmVsYXl1c2Vy\r\n")
    auth, wait = client_events(dialogue)
    assert isinstance(auth, Command) and auth.auth == "LOGIN" and wait is PAUSED
    dialogue.receive_server(b"334 VXNlcm5hbWU6\r\n")
    assert answer(dialogue).answers == auth
    user, wait = client_events(dialogue)
    assert isinstance(user, AuthAnswer) and user.mechanism == "LOGIN" and wait is PAUSED
    assert b"cmVsYXl1c2Vy" not in repr(user).encode()
    dialogue.receive_client(b"RSET\r\n")  # looks like a command; it is the password
    dialogue.receive_server(b"334 UGFzc3dvcmQ6\r\n")
    assert answer(dialogue).answers == user
    password, _ = client_events(dialogue)
    assert isinstance(password, AuthAnswer) and password.raw == b"RSET\r\n"
    dialogue.receive_client(b"MAIL FROM:<a@b>\r\n")
    assert dialogue.next_client_event() is PAUSED
    dialogue.receive_server(b"235 2.7.0 ok\r\n")
    assert answer(dialogue).answers == password
    mail, _ = client_events(dialogue)
    assert isinstance(mail, Command) and mail.verb == "MAIL"


def test_auth_with_an_initial_response_keeps_only_the_mechanism() -> None:
    dialogue = greeted()
    dialogue.receive_client(b"AUTH PLAIN AGFubgBzM2NyZXQ=\r\n")
    auth, _ = client_events(dialogue)
    assert isinstance(auth, Command) and auth.auth == "PLAIN"
    dialogue.receive_server(b"235 ok\r\n")
    answer(dialogue)
    assert dialogue.next_client_event() is NEED_DATA


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (b"HTTP/1.1 400 Bad\r\n", "the server sent b'HTTP/1.1 400 Bad', which is no SMTP reply line"),
        (b"250-a\r\n251 b\r\n", "the server sent b'251 b', where the reply code changes from 250"),
    ],
)
def test_a_reply_against_the_grammar_is_refused_where_it_starts(sent: bytes, said: str) -> None:
    dialogue = greeted()
    dialogue.receive_server(sent)
    with pytest.raises(DialogueError, match=said) as error:
        dialogue.next_server_event()
    assert error.value.side == "server" and error.value.offset >= len(b"220 mx ready\r\n")


def test_a_line_longer_than_the_bound_is_refused() -> None:
    dialogue = Dialogue(max_line=100)
    dialogue.receive_client(b"x" * 101)
    with pytest.raises(DialogueError, match="the client sent a line longer than 100 bytes"):
        dialogue.next_client_event()


@pytest.mark.parametrize(
    "smuggled", [b"a\n.\r\nMAIL FROM:<x@y>\r\n", b"a\r\n.\nRSET\r\n", b"a\r.\r\nRSET\r\n", b"\n.\r\n"]
)
def test_a_dot_line_without_crlf_on_both_sides_is_message_content(smuggled: bytes) -> None:
    dialogue = greeted()
    dialogue.receive_client(b"DATA\r\n")
    client_events(dialogue)
    dialogue.receive_server(b"354 go\r\n")
    answer(dialogue)
    # Fed a byte at a time, so that every boundary falls inside the would-be terminator once.
    events: list[ClientEvent | Wait] = []
    for byte in smuggled + b"end\r\n.\r\n":
        dialogue.receive_client(bytes([byte]))
        events += [e for e in client_events(dialogue) if not isinstance(e, Wait)]
    *pieces, end = events
    assert all(isinstance(piece, MessageData) for piece in pieces)
    assert isinstance(end, EndOfMessage) and end.message == smuggled + b"end\r\n"

"""A log kept open for appending: each line is in the file as soon as it is written, a header only
at the top of a new file, a new day's path gets a file of its own, and two writers of one file (a
server started again in the same process) keep each other's lines. Milliseconds."""

from __future__ import annotations

from pathlib import Path

from reference_mta.appending import AppendFile


def test_lines_are_readable_at_once_and_a_header_tops_each_new_file(tmp_path: Path) -> None:
    log = AppendFile()
    first, second = tmp_path / "logs" / "day1.log", tmp_path / "logs" / "day2.log"
    log.append(first, b"one\n", header=b"#head\n")
    assert first.read_bytes() == b"#head\none\n"
    log.append(first, b"two\n", header=b"#head\n")
    log.append(second, b"three\n", header=b"#head\n")
    log.close()
    log.append(first, b"four\n", header=b"#head\n")  # opened again after close
    assert first.read_bytes() == b"#head\none\ntwo\nfour\n"
    assert second.read_bytes() == b"#head\nthree\n"
    log.close()


def test_two_writers_of_one_file_keep_each_others_lines(tmp_path: Path) -> None:
    path = tmp_path / "day.log"
    one, other = AppendFile(), AppendFile()
    one.append(path, b"a\n")
    other.append(path, b"b\n")
    one.append(path, b"c\n")
    assert path.read_bytes() == b"a\nb\nc\n"
    one.close()
    other.close()

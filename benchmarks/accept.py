"""Benchmark: how fast EX1 accepts mail, fed by Postfix's smtp-source, against two peers measured in the
same run: Debian Postfix standing in for EX1 in the same lab (its network namespace), and a bare aiosmtpd
server with a Sink handler.

smtp-source sends MESSAGES messages of LENGTH bytes, a new connection per message, over 1 and over 10
parallel sessions. Accepting is timed from smtp-source's start to its exit; "in the mailbox" from the same
start until every message is a file in the Maildir of alice@contoso.com (a mailbox on EX1 itself) or of
bob@contoso.com (a mailbox on EX2: EX1 relays it there, to the reference MTA in both labs). Each lab runs
in a process of its own (`mailflow lab up`), so the reference lab's peak RSS (VmHWM) is its own.

Run from the repository root (as root, with Postfix installed, for the Postfix peer):
    python -m benchmarks.accept [-m MESSAGES] [-l LENGTH] [-s SESSIONS,...]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import children, machine, options
from benchmarks.mailboxes import maildir_counter
from benchmarks.runner import note, run
from harness import targets

EX1_MAILBOX = "alice@contoso.com"
EX2_MAILBOX = "bob@contoso.com"


@dataclass
class Receiver:
    name: str
    rates: dict[int, float] = field(default_factory=dict)  # sessions: messages accepted per second
    to_ex1: dict[int, float] = field(default_factory=dict)  # sessions: seconds until all in alice's Maildir
    to_ex2: dict[int, float] = field(default_factory=dict)  # sessions: seconds until all in bob's Maildir
    why_not: str | None = None  # not measured, and why
    peak_kb: int = 0  # the lab process's peak RSS (VmHWM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.accept",
        description="smtp-source against the reference MTA's EX1, Postfix as EX1, and a bare aiosmtpd sink",
    )
    parser.add_argument("-m", "--messages", type=options.positive_int, default=2000, help="messages per run")
    parser.add_argument(
        "-l", "--length", type=options.byte_size, default=2048, help="message size (2048, 2K)"
    )
    parser.add_argument(
        "-s", "--sessions", type=options.positive_ints, default=[1, 10], help="parallel sessions, e.g. 1,10"
    )
    return parser


def _lab_receiver(name: str, target: str, netns: bool, args: argparse.Namespace, folder: Path) -> Receiver:
    receiver = Receiver(name)
    config = children.lab_config_for(netns)
    postfix = target == "postfix"
    note(f"starting the {target} lab")
    with children.LabChild(target, config, folder) as lab:
        ex1 = children.ex1(config)
        alice = maildir_counter(folder, "EX1", EX1_MAILBOX, postfix=postfix)
        bob = maildir_counter(folder, "EX2", EX2_MAILBOX)
        for sessions in args.sessions:
            note(f"{name}: {args.messages} messages over {sessions} session(s) to {EX1_MAILBOX}")
            timing = children.smtp_source(
                ex1, messages=args.messages, sessions=sessions, length=args.length, arrived=alice
            )
            receiver.rates[sessions] = args.messages / timing.accepted
            assert timing.arrived is not None
            receiver.to_ex1[sessions] = timing.arrived
            note(f"{name}: {args.messages} messages over {sessions} session(s) to {EX2_MAILBOX}")
            timing = children.smtp_source(
                ex1,
                messages=args.messages,
                sessions=sessions,
                length=args.length,
                recipient=EX2_MAILBOX,
                arrived=bob,
            )
            assert timing.arrived is not None
            receiver.to_ex2[sessions] = timing.arrived
        receiver.peak_kb = lab.memory().peak_kb
    return receiver


def _aiosmtpd_receiver(args: argparse.Namespace) -> Receiver:
    receiver = Receiver("aiosmtpd Sink")
    config = children.lab_config_for(netns=False)
    # An address of the lab's block that no lab host takes, on the lab's SMTP port.
    address = str(config.base + 250)
    with children.aiosmtpd_sink(address, config.port(25)) as server:
        for sessions in args.sessions:
            note(f"aiosmtpd: {args.messages} messages over {sessions} session(s)")
            timing = children.smtp_source(
                server, messages=args.messages, sessions=sessions, length=args.length
            )
            receiver.rates[sessions] = args.messages / timing.accepted
    return receiver


def _ratio(mine: float | None, theirs: float | None) -> str:
    return f"{mine / theirs:.2f}x" if mine is not None and theirs else "-"


def _report(
    args: argparse.Namespace, reference: Receiver, postfix: Receiver, aiosmtpd: Receiver
) -> list[str]:
    size = options.shown_size(args.length)
    lines = [
        f"accept: smtp-source, {args.messages} messages of {size}, a connection per message, to EX1",
        f"  {'sessions':>8}  {'receiver':16} {'accepted msg/s':>14}  {'all in ' + EX1_MAILBOX + ' (EX1)':>33}"
        f"  {'all in ' + EX2_MAILBOX + ' (EX2)':>31}",
    ]
    for sessions in args.sessions:
        for receiver in (reference, postfix, aiosmtpd):
            if receiver.why_not is not None:
                continue
            to_ex1 = receiver.to_ex1.get(sessions)
            to_ex2 = receiver.to_ex2.get(sessions)
            lines.append(
                f"  {sessions:>8}  {receiver.name:16} {receiver.rates[sessions]:14.1f}"
                f"  {f'{to_ex1:.2f} s' if to_ex1 is not None else '-':>33}"
                f"  {f'{to_ex2:.2f} s' if to_ex2 is not None else '-':>31}"
            )
    if postfix.why_not is not None:
        lines.append(f"  Postfix as EX1 not measured: {postfix.why_not}")
    for sessions in args.sessions:
        lines.append(
            f"  ratio, {sessions} session(s): msg/s reference/Postfix "
            f"{_ratio(reference.rates[sessions], postfix.rates.get(sessions))}, reference/aiosmtpd "
            f"{_ratio(reference.rates[sessions], aiosmtpd.rates[sessions])}; time to alice's mailbox "
            f"reference/Postfix {_ratio(reference.to_ex1[sessions], postfix.to_ex1.get(sessions))}, "
            f"to bob's on EX2 {_ratio(reference.to_ex2[sessions], postfix.to_ex2.get(sessions))}"
        )
    peak_mb = reference.peak_kb / 1024
    lines.append(f"  peak RSS of the reference lab's process (VmHWM): {peak_mb:.1f} MB")
    most = max(args.sessions)
    postfix_rate = postfix.rates.get(most)
    lines.append(
        machine.summary(
            "accept",
            f"{args.messages} x {size}, {most} session(s): reference {reference.rates[most]:.0f} msg/s, "
            f"Postfix {f'{postfix_rate:.0f} msg/s' if postfix_rate else 'not measured'}, "
            f"aiosmtpd {aiosmtpd.rates[most]:.0f} msg/s; reference/Postfix "
            f"{_ratio(reference.rates[most], postfix_rate)}, reference/aiosmtpd "
            f"{_ratio(reference.rates[most], aiosmtpd.rates[most])}; all in EX1 mailbox "
            f"{reference.to_ex1[most]:.1f} s (Postfix {_seconds(postfix.to_ex1.get(most))}), in EX2 mailbox "
            f"{reference.to_ex2[most]:.1f} s (Postfix {_seconds(postfix.to_ex2.get(most))}); "
            f"reference lab peak RSS {peak_mb:.0f} MB",
        )
    )
    return lines


def _seconds(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "-"


def measure(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as scratch:
        folder = Path(scratch)
        reference = _lab_receiver("reference EX1", "reference", False, args, folder / "reference")
        why_not = targets.get("postfix").unavailable()
        if why_not is None:
            postfix = _lab_receiver("Postfix as EX1", "postfix", True, args, folder / "postfix")
        else:
            postfix = Receiver("Postfix as EX1", why_not=why_not)
        aiosmtpd = _aiosmtpd_receiver(args)
    return _report(args, reference, postfix, aiosmtpd)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run("accept", lambda: measure(args))


if __name__ == "__main__":
    main()

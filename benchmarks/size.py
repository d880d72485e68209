"""Benchmark: what message size and recipient count cost the reference MTA's EX1, against a peer measured in
the same run: Debian Postfix standing in for EX1 in the same lab (its network namespace), or, where Postfix
cannot run here, a bare aiosmtpd server with a Sink handler (the report says which, and why).

smtp-source sends to EX1 of the sizes lab (fixtures/labs/sizes.yaml: no size limit, open relay), from
ann@fabrikam.com to recipients at fabrikam.com, an Internet sink host of the lab: the directory has a few
mailboxes, the sink takes any number of recipients. smtp-source numbers them (1rcpt@fabrikam.com, ...).
Each point sends MESSAGES messages over one session, a connection per message, timed from smtp-source's
start to its exit; the lab then delivers everything to the sink before the next point starts.
  - sizes (1 recipient): seconds per message;
  - recipients (the smallest size): seconds per message, and the cost of each recipient past the first;
  - memory: the reference lab process's peak RSS (VmHWM) while accepting one message of RSS_SIZE, then
    RSS_MESSAGES of them at once (one session each), each over the idle process's RSS.

Run from the repository root: python -m benchmarks.size [--sizes 10K,1M,10M,25M] [--recipients 1,10,100,1000]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import children, machine, options
from benchmarks.mailboxes import sink_counter, wait_until_drained
from benchmarks.runner import note, run
from harness import targets

SINK_HOST = "fabrikam-mx"
RECIPIENT = "rcpt@fabrikam.com"
LAB = "sizes"


@dataclass
class Costs:
    name: str
    per_size: dict[int, float] = field(default_factory=dict)  # size: seconds per message
    per_count: dict[int, float] = field(default_factory=dict)  # recipients: seconds per message


@dataclass
class Memory:
    idle_kb: int
    one_kb: int
    many_kb: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.size",
        description="message size and recipient count, the reference MTA's EX1 against Postfix as EX1",
    )
    parser.add_argument("--sizes", type=options.byte_sizes, default=options.byte_sizes("10K,1M,10M,25M"))
    parser.add_argument("--recipients", type=options.positive_ints, default=[1, 10, 100, 1000])
    parser.add_argument("-m", "--messages", type=options.positive_int, default=5, help="messages per point")
    parser.add_argument("--rss-size", type=options.byte_size, default=options.byte_size("10M"))
    parser.add_argument("--rss-messages", type=options.positive_int, default=20)
    return parser


def _sweep(costs: Costs, server: tuple[str, int], args: argparse.Namespace, workdir: Path | None) -> None:
    """Every point; with the lab's `workdir`, waits after each until the lab has delivered to its sink."""
    sink = sink_counter(workdir, SINK_HOST) if workdir is not None else None
    points = [(size, 1) for size in args.sizes] + [(min(args.sizes), count) for count in args.recipients]
    for size, count in dict.fromkeys(points):  # the smallest size to one recipient is in both lists
        note(f"{costs.name}: {args.messages} x {options.shown_size(size)} to {count} recipient(s)")
        before = sink() if sink is not None else 0
        timing = children.smtp_source(
            server, messages=args.messages, length=size, recipient=RECIPIENT, recipients=count
        )
        seconds = timing.accepted / args.messages
        if count == 1:
            costs.per_size[size] = seconds
        if size == min(args.sizes):
            costs.per_count[count] = seconds
        if workdir is not None and sink is not None:
            wait_until_drained(workdir, sink, before + args.messages)


def _memory(lab: children.LabChild, server: tuple[str, int], args: argparse.Namespace) -> Memory:
    sink = sink_counter(lab.workdir, SINK_HOST)
    idle = lab.memory().rss_kb
    note(f"reference EX1: peak RSS, 1 then {args.rss_messages} x {options.shown_size(args.rss_size)}")
    children.smtp_source(server, messages=1, length=args.rss_size, recipient=RECIPIENT)
    one = lab.memory().peak_kb
    children.smtp_source(
        server,
        messages=args.rss_messages,
        sessions=args.rss_messages,
        length=args.rss_size,
        recipient=RECIPIENT,
    )
    many = lab.memory().peak_kb
    wait_until_drained(lab.workdir, sink, 1 + args.rss_messages)
    return Memory(idle, one, many)


def _per_recipient(costs: Costs, count: int) -> str:
    """The cost of each recipient past the first, from this count's seconds per message."""
    first = min(costs.per_count)
    if count == first:
        return "-"
    return f"{(costs.per_count[count] - costs.per_count[first]) / (count - first) * 1000:.3f} ms"


def measure(args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as scratch:
        folder = Path(scratch)
        config = children.lab_config_for(netns=False, lab=LAB)
        note("starting the reference lab")
        reference = Costs("reference EX1")
        with children.LabChild("reference", config, folder / "reference") as lab:
            server = children.ex1(config)
            memory = _memory(lab, server, args)
            _sweep(reference, server, args, folder / "reference")
        why_not = targets.get("postfix").unavailable()
        if why_not is None:
            peer = Costs("Postfix as EX1")
            netns_config = children.lab_config_for(netns=True, lab=LAB)
            note("starting the postfix lab")
            with children.LabChild("postfix", netns_config, folder / "postfix"):
                _sweep(peer, children.ex1(netns_config), args, folder / "postfix")
        else:
            peer = Costs("aiosmtpd Sink")
            with children.aiosmtpd_sink(str(config.base + 250), config.port(25)) as sink:
                _sweep(peer, sink, args, None)
    return _report(args, reference, peer, why_not, memory)


def _report(
    args: argparse.Namespace, reference: Costs, peer: Costs, why_not: str | None, memory: Memory
) -> list[str]:
    lines = [
        f"size: smtp-source, {args.messages} messages per point, one session, to EX1 of the {LAB} lab, "
        f"recipients at fabrikam.com (an Internet sink of the lab)",
    ]
    if why_not is not None:
        lines.append(f"  peer: aiosmtpd Sink, because Postfix cannot run here: {why_not}")
    lines.append(f"  {'size':>8} {'reference s/msg':>16} {peer.name + ' s/msg':>22} {'ref/peer':>8}")
    for size in args.sizes:
        mine, theirs = reference.per_size[size], peer.per_size[size]
        lines.append(f"  {options.shown_size(size):>8} {mine:16.4f} {theirs:22.4f} {mine / theirs:7.2f}x")
    smallest = options.shown_size(min(args.sizes))
    lines.append(
        f"  {'rcpts':>8} {'reference s/msg':>16} {'per extra rcpt':>15} {peer.name + ' s/msg':>22} "
        f"{'per extra rcpt':>15}   (messages of {smallest})"
    )
    for count in args.recipients:
        lines.append(
            f"  {count:>8} {reference.per_count[count]:16.4f} {_per_recipient(reference, count):>15} "
            f"{peer.per_count[count]:22.4f} {_per_recipient(peer, count):>15}"
        )
    rss = options.shown_size(args.rss_size)
    lines.append(
        f"  reference lab process RSS: idle {memory.idle_kb / 1024:.1f} MB; peak with 1 x {rss} "
        f"{memory.one_kb / 1024:.1f} MB ({memory.one_kb / memory.idle_kb:.2f}x idle); peak with "
        f"{args.rss_messages} x {rss} at once {memory.many_kb / 1024:.1f} MB "
        f"({memory.many_kb / memory.idle_kb:.2f}x idle)"
    )
    largest, most = max(args.sizes), max(args.recipients)
    lines.append(
        machine.summary(
            "size",
            f"{options.shown_size(largest)}: reference {reference.per_size[largest]:.3f} s/msg, "
            f"{peer.name} {peer.per_size[largest]:.3f} s/msg "
            f"({reference.per_size[largest] / peer.per_size[largest]:.2f}x); {most} rcpts: reference "
            f"{reference.per_count[most]:.3f} s/msg ({_per_recipient(reference, most)}/rcpt), "
            f"{peer.name} {peer.per_count[most]:.3f} s/msg ({_per_recipient(peer, most)}/rcpt); "
            f"peak RSS {args.rss_messages} x {rss} {memory.many_kb / memory.idle_kb:.2f}x idle, "
            f"1 x {rss} {memory.one_kb / memory.idle_kb:.2f}x",
        )
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run("size", lambda: measure(args))


if __name__ == "__main__":
    main()

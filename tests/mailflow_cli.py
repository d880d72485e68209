"""Running the real `mailflow` command in a subprocess, and trace files to run it on: one that fails,
one that is invalid, one that cannot run without MAILFLOW_AUTH_USER."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAILFLOW = Path(sys.executable).with_name("mailflow")
GOOD = ROOT / "traces" / "relay" / "relay-denied-by-default.yaml"
AUTH = ROOT / "traces" / "relay" / "auth-login-relays-to-internet.yaml"
FOLD = " " * 9  # the indent under which the summary folds a long line


def mailflow(
    *args: str, cwd: Path, columns: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`mailflow ARGS` with stdout and stderr piped, as a CI job runs it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAILFLOW_AUTH_")}
    environment.pop("COLUMNS", None)
    if columns is not None:
        environment["COLUMNS"] = str(columns)
    environment.update(env or {})
    return subprocess.run(
        [str(MAILFLOW), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def failing_trace(folder: Path) -> tuple[Path, int]:
    """The relay-denied trace expecting 250 where EX1 refuses the relay with 550; and that step's line."""
    refused = '{code: 550, enhanced: 5.7.1, text: "5.7.1 Unable to relay for nancy@northwind.example"}'
    text = GOOD.read_text().replace(f"- expect: {refused}", "- expect: 250")
    text = text.replace("id: relay/relay-denied-by-default", "id: try/relay-expected-wrongly")
    path = folder / "failing.yaml"
    path.write_text(text)
    return path, line_of(text, "send: RCPT TO:<nancy@northwind.example>") + 1


def invalid_trace(folder: Path) -> tuple[Path, int]:
    text = GOOD.read_text().replace("      - send: QUIT", "      - sned: QUIT")
    path = folder / "invalid.yaml"
    path.write_text(text)
    return path, line_of(text, "sned: QUIT")


def auth_from_environment_trace(folder: Path) -> Path:
    """An AUTH whose credentials come from MAILFLOW_AUTH_USER and _PASSWORD, as recorded traces have."""
    text = AUTH.read_text().replace(
        "user: relayuser, password: Relay-P@ss1",
        'user: "${MAILFLOW_AUTH_USER}", password: "${MAILFLOW_AUTH_PASSWORD}"',
    )
    text = text.replace("id: relay/auth-login-relays-to-internet", "id: try/auth-from-environment")
    path = folder / "auth-env.yaml"
    path.write_text(text)
    return path


def unfolded(output: str) -> list[str]:
    """The summary's lines with each folded line joined back into one."""
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(FOLD) and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def has_ansi(text: str) -> bool:
    return re.search(r"\x1b\[", text) is not None

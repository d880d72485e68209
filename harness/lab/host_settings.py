"""What the host's apt and pip are set to, carried into the builds of the lab's images, so that a build
reaches Debian's mirror and the Python package index as the host does (its mirror, proxies, certificate
bundle, local wheel folders and indexes). The same settings scripts/fresh_check.sh carries into its
container."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def debian_sources(suite: str) -> list[str]:
    """The Debian archives of the suite that the host's apt uses (its main archive, updates, security),
    as sources.list lines."""
    try:
        listed = subprocess.run(
            [
                "apt-get",
                "indextargets",
                "--format",
                "$(REPO_URI) $(RELEASE) $(COMPONENT)",
                "Origin: Debian",
                "Identifier: Packages",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:  # not a Debian host
        return []
    components: dict[tuple[str, str], list[str]] = {}
    for line in listed.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        uri, release, component = fields
        if release == suite or release.startswith(f"{suite}-"):
            components.setdefault((uri, release), []).append(component)
    return sorted(f"deb {uri} {release} {' '.join(c)}" for (uri, release), c in components.items())


def apt_options() -> list[str]:
    """The host's apt proxies and its settings for archives whose Release files have expired."""
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False).stdout
    wanted = re.compile(r"^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date) ")
    return [line for line in dump.splitlines() if wanted.match(line)]


_SYSTEM_DIRS = re.compile(r"^/(etc|usr|var|root|home|bin|sbin|lib\w*|proc|sys|dev|run|tmp)?(/.*)?$")


@dataclass
class PipSettings:
    """The host's pip configuration, for a container that installs with it: its PIP_* variables, its
    configuration files and the local paths they name, mounted read-only where they are."""

    environment: dict[str, str]
    mounts: dict[str, str]  # container path → host path

    @classmethod
    def of_host(cls) -> PipSettings:
        environment = {k: v for k, v in os.environ.items() if k.lower().startswith("pip_")}
        home = Path.home()
        files = {
            str(p): str(p) for p in (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")) if p.is_file()
        }
        if environment.get("PIP_CONFIG_FILE") and Path(environment["PIP_CONFIG_FILE"]).is_file():
            files[environment["PIP_CONFIG_FILE"]] = environment["PIP_CONFIG_FILE"]
        for name in (".pip/pip.conf", ".config/pip/pip.conf"):
            if (home / name).is_file():
                files[f"/root/{name}"] = str(home / name)
        texts = [*environment.values(), *(Path(f).read_text(errors="replace") for f in files.values())]
        mounts = dict(files)
        for path in _named_paths(texts):
            mounts.setdefault(path, path)
        return cls(environment, mounts)


def _named_paths(texts: Iterable[str]) -> list[str]:
    """The local paths pip settings name: a certificate bundle, a wheel folder, a file:// index (with
    its parent: a PEP 503 index links to its files with relative URLs such as ../../files/x.whl)."""
    found: set[str] = set()
    for text in texts:
        for match in re.finditer(r"(?:file://|/)[^\s\"']+", text):
            value = match.group()
            path = Path(value.removeprefix("file://"))
            if not path.exists():
                continue
            if value.startswith("file://"):
                path = path.parent
            # A folder such as /usr names the system itself, not something to carry.
            if path.is_dir() and _SYSTEM_DIRS.match(str(path)):
                continue
            found.add(str(path))
    return sorted(found)

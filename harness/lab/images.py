"""The lab's container images: what goes into each, its content key, and how it is built.

There is no image registry to pull from: every image is made here, from Debian packages.

- `mailflow-base`: Debian's minimal system (mmdebstrap) plus what every lab host needs, loaded with
  `docker import`;
- `mailflow-lab`: the base plus a virtual environment at /opt/mailflow with this checkout installed;
- `mailflow-postfix`, `mailflow-exim`, `mailflow-opensmtpd`: the base plus that MTA's Debian package.

Each is tagged with its content key, a hash of what goes into it, so a build whose inputs did not change
is skipped, and labelled with its kind and key (`org.mailflow.kind`, `org.mailflow.key`) so that only
our images are ever listed, pruned or pushed.

The images above the base are made by running a container from the base on the host's network (it
reaches Debian's mirror and the Python package index as the host does, with the host's apt and pip
settings) and committing it, rather than by an mmdebstrap customize hook: they share the base's layer,
so a change to the code rebuilds a layer of the size of the virtual environment in tens of seconds,
and the three MTAs, whose packages conflict, cost one bootstrap instead of three.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.lab import host_settings

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.images import Image

SUITE = "bookworm"
VARIANT = "minbase"
# Raised when the way the base is bootstrapped or imported changes (not what goes into it), so that
# images built the old way get new keys and are built again.
RECIPE = "2"
# What every lab host needs besides the minimal system: Python for the harness (its venv module),
# the CA certificates pip checks the index against, ip and ps for the lab's own set-up and stop, and
# swaks, with the Perl modules its --tls needs, so that a client container may send with it.
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "ca-certificates",
    "iproute2",
    "procps",
    "swaks",
    "libnet-ssleay-perl",
    "libio-socket-ssl-perl",
)
# Each MTA's normal Debian package; Postfix with Dovecot, whose SASL it authenticates through.
MTA_PACKAGES: dict[str, tuple[str, ...]] = {
    "postfix": ("postfix", "dovecot-core"),
    "exim": ("exim4-daemon-light",),
    "opensmtpd": ("opensmtpd",),
}
KINDS = ("base", "lab", *MTA_PACKAGES)
# Where the project is installed in the lab image, and the code that goes into it.
VENV = "/opt/mailflow"
LAB_SOURCES = ("harness", "reference_mta")
LABEL_KIND = "org.mailflow.kind"
LABEL_KEY = "org.mailflow.key"
REGISTRY_ENV = "MAILFLOW_IMAGE_REGISTRY"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_CONTAINER = "mailflow-build-"  # + kind + "-" + the building process's pid

NO_DOCKER = (
    "Docker is needed to build and run the lab's images: on Debian, as root, "
    "`apt-get install docker.io mmdebstrap`, then start the engine with `dockerd --iptables=false`"
)

Say = Callable[[str], None]


class ImageError(RuntimeError):
    """An image could not be found, built, pulled or pushed; the message says why and what to do."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def repository(kind: str) -> str:
    """The local repository name of a kind's images."""
    if kind not in KINDS:
        raise ValueError(f"no image kind {kind!r}; kinds: {', '.join(KINDS)}")
    return f"mailflow-{kind}"


def reference(kind: str, key: str) -> str:
    return f"{repository(kind)}:{key}"


def parent(kind: str) -> str | None:
    """The kind an image is built on (None: bootstrapped from Debian's packages)."""
    return None if kind == "base" else "base"


# --- content keys ----------------------------------------------------------------------------------


def _digest(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        # Length-prefixed, so that no two different lists of parts hash alike.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:12]


def source_root() -> Path:
    """The checkout this module was loaded from (the lab image is built from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not all((root / d).is_dir() for d in LAB_SOURCES):
        raise ImageError(
            f"the lab image is built from a checkout of mailflow, and {root} is not one: "
            "run mailflow from a checkout (pip install -e .)"
        )
    return root


def lab_files(root: Path) -> list[Path]:
    """What goes into the lab image, relative to the checkout: pyproject.toml and the code (not the
    tests or the traces, which stay on the host)."""
    found = [Path("pyproject.toml")]
    for top in LAB_SOURCES:
        found += sorted(
            path.relative_to(root)
            for path in (root / top).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        )
    return found


def keys(root: Path) -> dict[str, str]:
    """Every kind's content key for this checkout. The images built on the base hold their build
    script too, so a change to how one is built makes it anew; RECIPE is for the base's bootstrap."""
    base = _digest(["base", RECIPE, SUITE, VARIANT, *BASE_PACKAGES])
    found = {"base": base}
    code = (part for path in lab_files(root) for part in (path.as_posix(), (root / path).read_bytes()))
    found["lab"] = _digest(["lab", base, build_script("lab"), *code])
    for kind, packages in MTA_PACKAGES.items():
        found[kind] = _digest([kind, base, build_script(kind), *packages])
    return found


# --- registry names --------------------------------------------------------------------------------

# docker-py sends a reference to the engine as it is given, and the engine's error for a malformed one
# does not say which part is wrong; so the name is checked here, by the grammar of
# github.com/distribution/reference: a host (name components, an optional port), then path components.
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = re.compile(rf"{_DOMAIN}(?::[0-9]+)?(?:/{_PATH})*")


def check_registry(name: str) -> str:
    """A registry (`host[:port][/path]`) to push to or pull from; ValueError says what is wrong."""
    registry = name.rstrip("/")
    if not _REGISTRY.fullmatch(registry):
        raise ValueError(
            f"{name!r} is not a registry: give host[:port][/path], e.g. registry.example:5000/ci "
            "(path in lower case letters, digits and . _ -)"
        )
    return registry


def configured_registry() -> str:
    """The registry MAILFLOW_IMAGE_REGISTRY names ("" if none); ValueError if it is not one."""
    name = os.environ.get(REGISTRY_ENV, "").strip()
    try:
        return check_registry(name) if name else ""
    except ValueError as exc:
        raise ValueError(f"{REGISTRY_ENV}: {exc}") from None


def remote(registry: str, kind: str, key: str) -> str:
    return f"{registry}/{reference(kind, key)}"


# --- what the build steps run ----------------------------------------------------------------------


def build_script(kind: str) -> str:
    """The shell script that turns a container of the base into the kind's image."""
    if kind == "lab":
        return "\n".join(
            (
                "set -eu",
                f"python3 -m venv {VENV}",
                f"{VENV}/bin/pip install --no-cache-dir --no-warn-script-location /tmp/mailflow-src",
                "rm -rf /tmp/mailflow-src",
                f"{VENV}/bin/mailflow --version",
            )
        )
    packages = " ".join(MTA_PACKAGES[kind])
    # Postfix's package would otherwise write a main.cf of its own: the lab renders the whole of it.
    preseed = "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections"
    return "\n".join(
        (
            "set -eu",
            # The lab starts the MTA itself, with its own configuration: no package script may start
            # one, now or when a package is added later (as scripts/install_mtas.sh does on a host).
            "printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d",
            *([preseed] if kind == "postfix" else []),
            "apt-get update -qq",
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {packages}",
            "apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        )
    )


def lab_context(root: Path) -> bytes:
    """The checkout's files the lab image installs, as a tar archive with the top folder mailflow-src."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        # pyproject.toml names README.md as the package's description; the README is not in the key:
        # it changes the metadata's text only, never what runs.
        for path in [*lab_files(root), Path("README.md")]:
            if (root / path).is_file():
                archive.add(root / path, arcname=f"mailflow-src/{path.as_posix()}")
    return buffer.getvalue()


def image_changes(kind: str, key: str) -> list[str]:
    """The Dockerfile instructions every image of the kind carries."""
    path = f"{VENV}/bin:{SYSTEM_PATH}" if kind == "lab" else SYSTEM_PATH
    return [f"ENV PATH={path}", 'CMD ["bash"]', f"LABEL {LABEL_KIND}={kind} {LABEL_KEY}={key}"]


# --- Docker ----------------------------------------------------------------------------------------


def client() -> DockerClient:
    """A client of the Docker engine, or ImageError saying how to get one."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise ImageError(
            f"the docker Python package is not installed (pip install docker). {NO_DOCKER}"
        ) from None
    try:
        engine = docker.from_env()
        engine.ping()
    except docker.errors.DockerException as exc:
        if "Permission denied" in str(exc) or "PermissionError" in str(exc):
            raise ImageError(
                f"the Docker engine's socket refuses this user ({_one_line(exc)}): "
                "run as root, or as a member of the docker group"
            ) from None
        raise ImageError(f"no Docker engine answers ({_one_line(exc)}). {NO_DOCKER}") from None
    return engine


def present(engine: DockerClient, ref: str) -> Image | None:
    from docker.errors import ImageNotFound

    try:
        return engine.images.get(ref)
    except ImageNotFound:
        return None


def image_for(kind: str, root: Path | None = None) -> str | None:
    """The reference of the kind's image for this checkout (or the one at `root`) if it is here, else
    None; builds nothing. ImageError if there is no Docker."""
    ref = reference(kind, keys(root or source_root())[kind])
    return ref if present(client(), ref) is not None else None


@contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time on this machine: two runs that need the same image build it once."""
    path = Path(tempfile.gettempdir()) / "mailflow-images.lock"
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(
    kinds: Iterable[str], say: Say = _stderr, root: Path | None = None, rebuild: bool = False
) -> dict[str, str]:
    """Each kind's image for this checkout (or the one at `root`), kind → reference, made where it is
    missing: pulled from MAILFLOW_IMAGE_REGISTRY when that is set and the registry has it, otherwise
    built. `rebuild` builds the kinds asked for again even where they are here: the key follows the
    package lists, not Debian's archive, so this is how an image takes the archive's updates (the old
    image loses its name, and prune removes it). Says a line for each image, and progress while one is
    built. ImageError if there is no Docker or a build fails; ValueError for an unknown kind or a
    malformed MAILFLOW_IMAGE_REGISTRY."""
    wanted = list(dict.fromkeys(kinds))
    for kind in wanted:
        repository(kind)  # a wrong kind is refused (ValueError) before anything is done
    registry = configured_registry()
    maker = _Maker(client(), root or source_root(), registry, say, set(wanted) if rebuild else set())
    for kind in sorted(wanted, key=KINDS.index):
        maker.make(kind)
    return {kind: reference(kind, maker.current[kind]) for kind in wanted}


class _Maker:
    """One ensure(): the images it has looked at, and how it makes a missing one."""

    def __init__(self, engine: DockerClient, root: Path, registry: str, say: Say, rebuild: set[str]) -> None:
        self.engine, self.root, self.registry, self.say, self.rebuild = engine, root, registry, say, rebuild
        self.current = keys(root)
        self.seen: set[str] = set()

    def ref(self, kind: str) -> str:
        return reference(kind, self.current[kind])

    def make(self, kind: str) -> None:
        """The kind's image, and the one it stands on only when it must be built."""
        if kind in self.seen:
            return
        self.seen.add(kind)
        again = kind in self.rebuild
        if not again and present(self.engine, self.ref(kind)) is not None:
            self.say(f"{self.ref(kind)}: up to date")
            return
        if not again and self.registry and self.pull(kind):
            return
        below = parent(kind)
        if below is not None:
            self.make(below)
        with _build_lock():
            if not again and present(self.engine, self.ref(kind)) is not None:  # built meanwhile
                self.say(f"{self.ref(kind)}: up to date")
            else:
                self.build(kind)

    def pull(self, kind: str) -> bool:
        from docker.errors import DockerException

        source = remote(self.registry, kind, self.current[kind])
        self.say(f"{self.ref(kind)}: pulling {source}")
        try:
            image = self.engine.images.pull(source)
        except DockerException as exc:
            self.say(f"{self.ref(kind)}: not pulled ({_one_line(exc)}); building it")
            return False
        image.tag(repository(kind), self.current[kind])
        self.say(f"{self.ref(kind)}: pulled")
        return True

    def build(self, kind: str) -> None:
        ref, key, began = self.ref(kind), self.current[kind], time.monotonic()
        _remove_stale_builds(self.engine)
        if kind == "base":
            self.say(f"{ref}: building: Debian {SUITE} {VARIANT} + {' '.join(BASE_PACKAGES)} (mmdebstrap)")
            with tempfile.TemporaryDirectory(prefix="mailflow-image-") as folder:
                tar = Path(folder) / "base.tar"
                bootstrap(tar)
                self.say(f"{ref}: importing")
                self.engine.api.import_image_from_file(
                    str(tar), repository=repository(kind), tag=key, changes=image_changes(kind, key)
                )
        else:
            what = f"the checkout in a venv at {VENV}" if kind == "lab" else " ".join(MTA_PACKAGES[kind])
            self.say(f"{ref}: building: {self.ref('base')} + {what}")
            archive = lab_context(self.root) if kind == "lab" else None
            _run_and_commit(self.engine, kind, self.ref("base"), key, archive)
        if present(self.engine, ref) is None:
            raise ImageError(f"{ref}: the engine did not keep the image it was given")
        self.say(f"{ref}: built in {time.monotonic() - began:.0f} s")


def bootstrap(tar: Path) -> None:
    """Debian's minimal system plus the base packages, as a tar file, from the host's Debian mirror."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError(f"mmdebstrap is not installed: it builds the base image. {NO_DOCKER}")
    sources = host_settings.debian_sources(SUITE)
    if not sources:
        raise ImageError(
            f"the host's apt knows no Debian {SUITE} archive to build the base image from: "
            "add one to /etc/apt/sources.list and run apt-get update"
        )
    command = [
        "mmdebstrap",
        "--quiet",
        f"--variant={VARIANT}",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--aptopt={option}" for option in host_settings.apt_options()),
        SUITE,
        str(tar),
        # Lines, not a file: mmdebstrap writes them as the image's /etc/apt/sources.list, which the
        # MTA images' builds then use.
        *sources,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(
            f"mmdebstrap failed (exit {result.returncode}):\n{_tail(result.stdout + result.stderr)}"
        )


def _run_and_commit(engine: DockerClient, kind: str, base: str, key: str, archive: bytes | None) -> None:
    """Runs the kind's build script in a container of the base, on the host's network (apt and pip
    reach their archives as the host does, with its pip settings), and commits it as the kind's image."""
    from docker.types import Mount

    pip = host_settings.PipSettings.of_host()
    container = engine.containers.create(
        base,
        # The pip settings are the command's environment, not the container's: a commit keeps the
        # container's, and the image must not carry the host's settings.
        [
            "env",
            *(f"{name}={value}" for name, value in pip.environment.items()),
            "sh",
            "-c",
            build_script(kind),
        ],
        name=f"{BUILD_CONTAINER}{kind}-{os.getpid()}",
        network_mode="host",
        mounts=[Mount(inside, host, type="bind", read_only=True) for inside, host in pip.mounts.items()],
    )
    try:
        if archive is not None:
            container.put_archive("/tmp", archive)
        container.start()
        status = container.wait()["StatusCode"]
        if status != 0:
            log = container.logs().decode(errors="replace")
            raise ImageError(f"building {reference(kind, key)} failed (exit {status}):\n{_tail(log)}")
        container.commit(repository(kind), key, changes=image_changes(kind, key))
    finally:
        container.remove(force=True)


def _remove_stale_builds(engine: DockerClient) -> None:
    """Build containers whose process was killed outright (kill -9) are removed by the next build."""
    for container in engine.containers.list(all=True, filters={"name": BUILD_CONTAINER}):
        pid = (container.name or "").rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            container.remove(force=True)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- what is here: list, prune, push ---------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """One name of one of our images."""

    kind: str
    tag: str  # mailflow-KIND:KEY, or REGISTRY/mailflow-KIND:KEY; "" for an image without a name
    key: str
    image_id: str
    size: int
    created: str
    current: bool | None  # None: not known (no checkout to compare with)


def listed(engine: DockerClient) -> list[Listed]:
    """Our images (by their label), one entry per name: by kind, the current ones first, then newest
    first."""
    try:
        current: dict[str, str] | None = keys(source_root())
    except ImageError:
        current = None
    found = []
    for image in engine.images.list(filters={"label": LABEL_KIND}):
        kind = image.labels.get(LABEL_KIND, "")
        if kind not in KINDS:
            continue
        # By the name, not the label: the same image may carry this checkout's key and another's.
        names = [t for t in image.tags if t.rsplit("/", 1)[-1].startswith(f"{repository(kind)}:")]
        for tag, key in [(t, t.rsplit(":", 1)[1]) for t in names] or [("", image.labels.get(LABEL_KEY, ""))]:
            found.append(
                Listed(
                    kind,
                    tag,
                    key,
                    str(image.id),
                    int(image.attrs.get("Size", 0)),
                    str(image.attrs.get("Created", "")),
                    None if current is None else bool(tag) and current[kind] == key,
                )
            )
    found.sort(key=lambda i: i.created, reverse=True)
    found.sort(key=lambda i: (KINDS.index(i.kind), not i.current))
    return found


def prune(engine: DockerClient, say: Say = _stderr) -> int:
    """Removes every name of our images whose key is not this checkout's (and our images without a
    name); returns how many. An image stays while another name or a container uses it."""
    from docker.errors import APIError

    source_root()  # what is current is this checkout's: without one, nothing is old
    removed = 0
    # The base last: the others are built on it.
    for item in sorted(listed(engine), key=lambda i: i.kind == "base"):
        if item.current:
            continue
        name = item.tag or item.image_id
        try:
            engine.images.remove(name)
        except APIError as exc:
            say(f"{name}: kept ({_one_line(exc)})")
            continue
        removed += 1
        say(f"{name}: removed")
    return removed


def push(engine: DockerClient, registry: str, kinds: Iterable[str], say: Say = _stderr) -> list[str]:
    """Tags each kind's current image REGISTRY/mailflow-KIND:KEY and pushes it; returns what was pushed."""
    from docker.errors import DockerException

    current = keys(source_root())
    wanted = list(dict.fromkeys(kinds))
    missing = [reference(k, current[k]) for k in wanted if present(engine, reference(k, current[k])) is None]
    if missing:
        raise ImageError(f"not built yet: {', '.join(missing)} (run mailflow images build first)")
    pushed = []
    for kind in wanted:
        target, name = remote(registry, kind, current[kind]), f"{registry}/{repository(kind)}"
        engine.images.get(reference(kind, current[kind])).tag(name, current[kind])
        say(f"{target}: pushing")
        try:
            for event in engine.api.push(name, tag=current[kind], stream=True, decode=True):
                if "error" in event:
                    raise ImageError(f"pushing {target} failed: {' '.join(str(event['error']).split())}")
        except DockerException as exc:
            raise ImageError(f"pushing {target} failed: {_one_line(exc)}") from None
        say(f"{target}: pushed")
        pushed.append(target)
    return pushed

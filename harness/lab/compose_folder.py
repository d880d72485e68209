"""Writing an exported lab's folder (harness/lab/compose.py renders what goes in it): the folder is made
beside DIR and renamed to it once complete, so a failure leaves nothing half-written; the keys and the
lab's CA are made here, once; and the postfix user of an MTA image is read from the image."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from harness.lab import compose, containers
from harness.lab.certificates import LabCertificates
from harness.lab.host_agent import chain_file


class FolderError(ValueError):
    """DIR cannot take the export (a file, a folder in use, a place that cannot be written)."""


class ExportBroken(RuntimeError):
    """The export could not be made here (no Docker engine to read an image, a write that failed)."""


def check(folder: Path, force: bool) -> None:
    """DIR must be new or empty, unless `force`."""
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"--compose {folder}: a file is there, not a folder")
    if folder.is_dir() and not force and (entries := sorted(p.name for p in folder.iterdir())):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FolderError(
            f"--compose {folder} is not empty ({shown}): choose a new folder, or --force to write the "
            "export's files into it"
        )


def image_user(image: str, user: str) -> tuple[int, int]:
    """The uid and gid of `user` in `image`, from a throw-away container with no network."""
    try:
        client = containers.engine()
    except containers.DockerUnavailable as exc:
        raise ExportBroken(f"reading the {user} user of image {image}: {exc}") from None
    import docker.errors

    try:
        output = client.containers.run(
            image, ["sh", "-c", f"id -u {user}; id -g {user}"], remove=True, network_disabled=True
        )
    except docker.errors.ImageNotFound:
        raise ExportBroken(f"no image {image} here (mailflow images build makes it)") from None
    except docker.errors.DockerException as exc:
        raise ExportBroken(f"cannot read the {user} user of image {image}: {exc}") from None
    finally:
        client.close()
    uid, gid = output.decode().split()
    return int(uid), int(gid)


def write(folder: Path, files: Mapping[str, str], export: compose.Export, source: Path | None) -> None:
    """Write the export's `files` (compose.write_plan), the lab's directory, keys and CA, and with
    `source` (a checkout) the harness's code, into `folder`: by a rename of a complete folder made
    beside it, or into `folder` itself when it is not empty (--force)."""
    in_place = folder.is_dir() and any(folder.iterdir())
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder if in_place else Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise FolderError(f"--compose {folder}: {exc.strerror or exc}") from None
    written = False
    try:
        staging.chmod(0o755)
        _write_files(staging, files, compose.modes(export))
        lab = staging / compose.LAB_FOLDER
        lab.chmod(0o755)  # an MTA's unprivileged daemons go through it
        directory = export.config.global_catalog.directory
        shutil.copyfile(directory, lab / directory.name)
        certificates = LabCertificates(lab, export.config.name)  # the CA: lab/lab-ca.pem
        for server in export.config.organization.servers:
            chain = chain_file(lab, server.fqdn)
            chain.parent.mkdir(exist_ok=True)
            certificates.write_chain(server.fqdn, chain)
        if source is not None:
            for package in ("harness", "reference_mta"):
                shutil.copytree(
                    source / package,
                    staging / compose.SOURCE_FOLDER / package,
                    ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True,
                )
        if not in_place:
            staging.rename(folder)  # over an empty folder too
        written = True
    except OSError as exc:
        raise ExportBroken(f"cannot write the export to {folder}: {exc}") from None
    finally:
        if not written and not in_place:
            shutil.rmtree(staging, ignore_errors=True)


def _write_files(root: Path, files: Mapping[str, str], modes: Mapping[str, int]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = modes.get(relative, 0o644)
        # Made with its mode, so a secret is never readable by others, even for a moment.
        with os.fdopen(
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8"
        ) as out:
            out.write(text)
        path.chmod(mode)  # the umask may have taken bits off; an existing file kept its old mode

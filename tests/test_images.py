"""The lab's container images (`mailflow images`, harness/lab/images.py), built for real: mmdebstrap,
then the Docker engine. The images are built once per test session, by the real command; a test that
needs them is skipped with the reason where there is no Docker engine, no mmdebstrap or no root."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from harness.lab import images

ROOT = Path(__file__).resolve().parents[1]
MAILFLOW = str(Path(sys.executable).with_name("mailflow"))
BINARIES = {"postfix": "/usr/sbin/postfix", "exim": "/usr/sbin/exim4", "opensmtpd": "/usr/sbin/smtpd"}


def _mailflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILFLOW, "images", *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "building the lab's images needs root (mmdebstrap, the Docker engine)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (apt-get install mmdebstrap)"
    try:
        images.client()
    except images.ImageError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Built:
    refs: dict[str, str]  # kind → reference
    output: str  # what the first `mailflow images build` of the session printed


@pytest.fixture(scope="session")
def built() -> Built:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    result = _mailflow("build")
    assert result.returncode == 0, result.stdout + result.stderr
    current = images.keys(ROOT)
    return Built({kind: images.reference(kind, current[kind]) for kind in images.KINDS}, result.stdout)


@pytest.fixture
def other_keys() -> Iterator[None]:
    """For a test that makes images of keys not this checkout's, or prunes them: one at a time, so that
    under pytest-xdist a prune does not remove what another test has just made."""
    with (Path(tempfile.gettempdir()) / "mailflow-images-tests.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(ref: str, *command: str, **options: object) -> str:
    """What the command prints in a container of the image (no network); read after it has ended, as
    the engine may drop the output of a container that ends before its logs are followed."""
    container = images.client().containers.create(ref, list(command), network_mode="none", **options)
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        output: bytes = container.logs()
    finally:
        container.remove(force=True)
    assert status == 0, output.decode(errors="replace")
    return output.decode()


# --- building ---------------------------------------------------------------------------------------


def test_every_image_is_built_and_labelled_with_its_kind_and_key(built: Built) -> None:
    engine = images.client()
    for kind, ref in built.refs.items():
        assert ref in built.output  # built, or found, by the session's command
        labels = engine.images.get(ref).labels
        assert labels[images.LABEL_KIND] == kind
        assert labels[images.LABEL_KEY] == ref.rsplit(":", 1)[1]


def test_a_second_build_builds_nothing(built: Built) -> None:
    engine = images.client()
    before = {kind: engine.images.get(ref).id for kind, ref in built.refs.items()}
    said: list[str] = []
    assert images.ensure(images.KINDS, say=said.append) == built.refs
    assert said == [f"{ref}: up to date" for ref in built.refs.values()]
    assert {kind: engine.images.get(ref).id for kind, ref in built.refs.items()} == before
    # The command says the same, and exits 0.
    again = _mailflow("build")
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stdout
    assert again.stdout.count(": up to date") == len(images.KINDS)
    assert images.image_for("lab") == built.refs["lab"]


def test_ensure_returns_what_was_asked_and_looks_at_nothing_else(built: Built) -> None:
    said: list[str] = []
    assert images.ensure(["postfix", "lab", "postfix"], say=said.append) == {
        "postfix": built.refs["postfix"],
        "lab": built.refs["lab"],
    }
    assert said == [f"{built.refs['lab']}: up to date", f"{built.refs['postfix']}: up to date"]


def test_the_lab_image_runs_this_checkout_and_reads_a_lab_file_mounted_at_its_path(built: Built) -> None:
    from docker.types import Mount

    from harness.lab import config

    fixtures = ROOT / "fixtures"
    lab_file = fixtures / "labs" / "contoso.yaml"
    script = (
        "import harness, reference_mta\n"
        "from pathlib import Path\n"
        "from harness.lab import config\n"
        "from harness.lab.gc import MockGlobalCatalog\n"
        f"lab = config.load(Path({str(lab_file)!r}))\n"
        "MockGlobalCatalog(lab.global_catalog).load()\n"
        "print(harness.__file__)\n"
        "print(lab.name, len(lab.hosts), sorted(lab.hosts)[0])\n"
    )
    assert _run(built.refs["lab"], "mailflow", "--version") == f"mailflow, version {version('mailflow')}\n"
    # The lab file and its directory are mounted from the host at the same paths, as a run does.
    mount = Mount(str(fixtures), str(fixtures), type="bind", read_only=True)
    output = _run(built.refs["lab"], "python3", "-c", script, mounts=[mount])
    lab = config.load(lab_file)
    assert output.splitlines() == [
        "/opt/mailflow/lib/python3.11/site-packages/harness/__init__.py",  # installed, not the checkout
        f"{lab.name} {len(lab.hosts)} {sorted(lab.hosts)[0]}",
    ]


@pytest.mark.parametrize("kind", list(images.MTA_PACKAGES))
def test_each_mta_image_has_its_mta_and_no_other(built: Built, kind: str, other_keys: None) -> None:
    # other_keys: the rebuild test replaces an MTA image and prunes the old one, which a container
    # of it here would keep.
    checks = " ; ".join(f"test -x {path} && echo {path}" for path in BINARIES.values())
    output = _run(built.refs[kind], "sh", "-c", f"{checks} ; test -x /usr/sbin/policy-rc.d && echo policy")
    assert output.split() == [BINARIES[kind], "policy"]
    for package in images.MTA_PACKAGES[kind]:
        status = _run(built.refs[kind], "dpkg-query", "-W", "-f", "${Status}", package)
        assert status == "install ok installed"


def test_the_base_image_can_send_with_swaks_over_tls(built: Built) -> None:
    output = _run(built.refs["base"], "sh", "-c", "swaks --support 2>&1 | grep -i tls")
    assert "TLS" in output and "not available" not in output


def test_images_list_shows_each_kind_as_current(built: Built) -> None:
    result = _mailflow("list")
    assert result.returncode == 0, result.stderr
    for kind, ref in built.refs.items():
        row = next(line for line in result.stdout.splitlines() if ref in line)
        assert kind in row and "yes" in row


def test_prune_removes_an_older_key_and_keeps_the_current_ones(built: Built, other_keys: None) -> None:
    engine = images.client()
    stale = "0" * 12
    container = engine.containers.create(built.refs["base"], ["true"])
    try:
        container.commit(
            "mailflow-base", stale, changes=[f"LABEL {images.LABEL_KIND}=base {images.LABEL_KEY}={stale}"]
        )
    finally:
        container.remove()
    listed = _mailflow("list")
    assert any(f"mailflow-base:{stale}" in line and " no " in line for line in listed.stdout.splitlines())
    result = _mailflow("prune")
    assert result.returncode == 0, result.stderr
    assert f"mailflow-base:{stale}: removed" in result.stdout
    assert images.present(engine, f"mailflow-base:{stale}") is None
    assert all(images.present(engine, ref) is not None for ref in built.refs.values())


def test_rebuild_makes_a_new_image_and_prune_removes_the_old_one(built: Built, other_keys: None) -> None:
    engine = images.client()
    ref = built.refs["opensmtpd"]  # the quickest to build
    old = engine.images.get(ref).id
    result = _mailflow("build", "--rebuild", "opensmtpd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        f"{built.refs['base']}: up to date",
        f"{ref}: building: {built.refs['base']} + opensmtpd",
    ]
    assert engine.images.get(ref).id != old
    listed = _mailflow("list").stdout
    assert f"(no name) {old.removeprefix('sha256:')[:12]}" in listed
    result = _mailflow("prune")
    assert f"{old}: removed" in result.stdout
    assert images.present(engine, old) is None and images.present(engine, ref) is not None


# --- registries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Not A Registry", "registry.example/Team", "registry-.example", "host:port", "a//b", ""]
)
def test_a_bad_registry_name_is_refused_with_the_form_it_takes(name: str) -> None:
    result = _mailflow("push", name)
    assert result.returncode == 2
    assert f"{name!r} is not a registry: give host[:port][/path]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_registry_setting_is_refused_before_anything_is_built() -> None:
    result = _mailflow("build", env={images.REGISTRY_ENV: "https://registry.example"})
    assert result.returncode == 2
    assert "MAILFLOW_IMAGE_REGISTRY: 'https://registry.example' is not a registry" in result.stderr
    assert "building" not in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["localhost:5000", "registry.example/ci/team", "127.0.0.1:5000/mail_flow"])
def test_registry_names_of_the_reference_grammar_are_taken(name: str) -> None:
    assert images.check_registry(name + "/") == name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_pushing_to_a_registry_that_does_not_answer_is_a_broken_set_up(built: Built) -> None:
    registry = f"127.0.0.1:{_free_port()}"
    try:
        result = _mailflow("push", registry, "base")
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"pushing {registry}/{built.refs['base']} failed" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        if images.present(images.client(), f"{registry}/{built.refs['base']}") is not None:
            images.client().images.remove(f"{registry}/{built.refs['base']}")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A Docker registry (Debian's docker-registry) on a loopback port, storing in tmp_path."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    address = f"127.0.0.1:{_free_port()}"
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        f"http:\n  addr: {address}\n"
    )
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "docker-registry exited"
                assert time.monotonic() < deadline, f"docker-registry did not listen on {address}"
                time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_push_then_ensure_pulls_from_the_registry_instead_of_building(
    built: Built, registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_keys: None
) -> None:
    engine = images.client()
    # What the command pushes: this checkout's base image, as REGISTRY/mailflow-base:KEY.
    result = _mailflow("push", registry, "base")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{registry}/{built.refs['base']}: pushed" in result.stdout
    engine.images.remove(f"{registry}/{built.refs['base']}")

    # Another checkout (one more module under harness/) has another lab key, and no image here: one
    # pushed for it is pulled, not built. The images of this checkout stay as they are.
    tree = _another_checkout(tmp_path, "pulled")
    key = images.keys(tree)["lab"]
    ref, pushed = f"mailflow-lab:{key}", f"{registry}/mailflow-lab:{key}"
    assert key != built.refs["lab"].rsplit(":", 1)[1] and images.present(engine, ref) is None
    engine.images.get(built.refs["lab"]).tag(f"{registry}/mailflow-lab", key)
    for event in engine.api.push(f"{registry}/mailflow-lab", tag=key, stream=True, decode=True):
        assert "error" not in event, event
    engine.images.remove(pushed)
    monkeypatch.setenv(images.REGISTRY_ENV, registry)
    said: list[str] = []
    try:
        assert images.ensure(["lab"], say=said.append, root=tree) == {"lab": ref}
        assert said == [f"{ref}: pulling {pushed}", f"{ref}: pulled"]
        assert engine.images.get(ref).id == engine.images.get(built.refs["lab"]).id
    finally:
        for name in (ref, pushed):
            if images.present(engine, name) is not None:
                engine.images.remove(name)


def test_an_image_the_registry_lacks_is_built_from_the_checkout(
    built: Built, registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_keys: None
) -> None:
    engine = images.client()
    tree = _another_checkout(tmp_path, "built")
    ref = f"mailflow-lab:{images.keys(tree)['lab']}"
    assert images.image_for("lab", root=tree) is None
    monkeypatch.setenv(images.REGISTRY_ENV, registry)
    said: list[str] = []
    try:
        assert images.ensure(["lab"], say=said.append, root=tree) == {"lab": ref}
        assert images.image_for("lab", root=tree) == ref
        assert said[0] == f"{ref}: pulling {registry}/{ref}"
        assert said[1].startswith(f"{ref}: not pulled (") and said[1].endswith("); building it")
        assert said[2:4] == [
            f"{built.refs['base']}: up to date",
            f"{ref}: building: {built.refs['base']} + the checkout in a venv at {images.VENV}",
        ]
        assert said[4].startswith(f"{ref}: built in ")
        # The other checkout's module is in its image, and not in this checkout's.
        assert _run(ref, "python3", "-c", "from harness.changed import WHO; print(WHO)") == "built\n"
        missing = "import importlib.util; print(importlib.util.find_spec('harness.changed'))"
        assert _run(built.refs["lab"], "python3", "-c", missing) == "None\n"
    finally:
        if images.present(engine, ref) is not None:
            engine.images.remove(ref)


def _another_checkout(folder: Path, who: str) -> Path:
    """A copy of this checkout's code with one more module under harness/: another lab key."""
    tree = folder / "checkout"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", *images.LAB_SOURCES):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, tree / name)
    (tree / "harness" / "changed.py").write_text(f"WHO = {who!r}\n")
    return tree


# --- without Docker or mmdebstrap ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [["build"], ["list"], ["prune"], ["push", "localhost:5000"]])
def test_without_a_docker_engine_each_command_says_how_to_get_one(tmp_path: Path, command: list[str]) -> None:
    result = _mailflow(*command, env={"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})
    assert result.returncode == 3
    assert "no Docker engine answers" in result.stderr
    assert "apt-get install docker.io mmdebstrap" in result.stderr
    assert "dockerd --iptables=false" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_user_the_engine_refuses_is_told_to_be_root_or_in_the_docker_group() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another user")
    if _why_not():
        pytest.skip(_why_not())
    as_nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", MAILFLOW]
    if subprocess.run([*as_nobody, "--version"], capture_output=True, check=False).returncode != 0:
        pytest.skip("user nobody cannot run this checkout's mailflow (a folder above it is private)")
    result = subprocess.run([*as_nobody, "images", "list"], capture_output=True, text=True, check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the Docker engine's socket refuses this user" in result.stderr
    assert "run as root, or as a member of the docker group" in result.stderr


def test_without_mmdebstrap_the_base_image_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        images.ImageError, match=r"mmdebstrap is not installed.*apt-get install docker.io mmdebstrap"
    ):
        images.bootstrap(tmp_path / "base.tar")
    assert not (tmp_path / "base.tar").exists()


def test_an_unknown_kind_is_refused_with_the_kinds() -> None:
    result = subprocess.run(
        [MAILFLOW, "images", "build", "sendmail"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "'sendmail' is not one of 'base', 'lab', 'postfix', 'exim', 'opensmtpd'" in result.stderr


# --- content keys -------------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    for name, text in {
        "pyproject.toml": "[project]\nname = 'mailflow'\n",
        "harness/__init__.py": "",
        "harness/lab/config.py": "X = 1\n",
        "harness/schemas/lab.schema.json": "{}",
        "reference_mta/queuing.py": "Y = 2\n",
        "tests/test_x.py": "",
        "traces/inbound/a.yaml": "id: a\n",
        "README.md": "# mailflow\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_lab_key_follows_the_code_and_only_the_code(tmp_path: Path) -> None:
    _tree(tmp_path)
    first = images.keys(tmp_path)
    assert images.keys(tmp_path) == first  # the same tree, the same keys

    # What is not in the image does not change its key.
    (tmp_path / "tests/test_x.py").write_text("assert True\n")
    (tmp_path / "traces/inbound/a.yaml").write_text("id: b\n")
    (tmp_path / "README.md").write_text("# changed\n")
    (tmp_path / "harness/lab/__pycache__").mkdir()
    (tmp_path / "harness/lab/__pycache__/config.cpython-311.pyc").write_bytes(b"\0")
    assert images.keys(tmp_path) == first

    for change in (
        lambda: (tmp_path / "harness/lab/config.py").write_text("X = 2\n"),
        lambda: (tmp_path / "harness/schemas/lab.schema.json").write_text('{"type": "object"}'),
        lambda: (tmp_path / "reference_mta/queuing.py").rename(tmp_path / "reference_mta/queue.py"),
        lambda: (tmp_path / "pyproject.toml").write_text("[project]\nname = 'mailflow'\nversion = '2'\n"),
    ):
        before = images.keys(tmp_path)
        change()
        after = images.keys(tmp_path)
        assert after["lab"] != before["lab"]
        # The base and the MTAs' images do not hold the code.
        assert {k: v for k, v in after.items() if k != "lab"} == {
            k: v for k, v in first.items() if k != "lab"
        }


def test_an_mta_key_follows_its_packages_and_how_they_are_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path)
    first = images.keys(tmp_path)
    monkeypatch.setitem(images.MTA_PACKAGES, "exim", ("exim4-daemon-heavy",))
    second = images.keys(tmp_path)
    assert second["exim"] != first["exim"]
    assert "exim4-daemon-heavy" in images.build_script("exim")
    assert {k: v for k, v in second.items() if k != "exim"} == {k: v for k, v in first.items() if k != "exim"}


def test_keys_differ_by_kind_and_are_what_the_images_are_tagged_with() -> None:
    current = images.keys(ROOT)
    assert len(set(current.values())) == len(images.KINDS)
    assert all(len(key) == 12 and int(key, 16) >= 0 for key in current.values())
    assert images.reference("exim", current["exim"]) == f"mailflow-exim:{current['exim']}"

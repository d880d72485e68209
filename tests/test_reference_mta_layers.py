"""The reference MTA's components meet only through the queuing contract: none of them imports the
advanced queuing engine (only the server that wires them does), and the contract, the organization
model and the directory interface import no component. Read from the source, every import statement
counted (tests/test_harness_layers.py checks there is no import circle)."""

from __future__ import annotations

from tests.test_harness_layers import ROOT, _imports, _module_name

PATHS = {
    _module_name(path): path
    for package in ("reference_mta", "harness")
    for path in (ROOT / package).rglob("*.py")
}


def _imports_of(module: str) -> set[str]:
    """The modules (not packages, not names) of the project that `module` imports."""
    package = module.split(".")[0]
    return {name for name in _imports(PATHS[module], package) if name in PATHS and name != package}


def _imported_by() -> dict[str, set[str]]:
    """Every module of the reference MTA and the harness → the project modules that import it."""
    importers: dict[str, set[str]] = {}
    for module in PATHS:
        for imported in _imports_of(module):
            importers.setdefault(imported, set()).add(module)
    return importers


def test_only_the_server_imports_the_queuing_engine() -> None:
    assert _imported_by()["reference_mta.queuing"] == {"reference_mta.server"}


def test_the_contract_and_the_interfaces_import_no_component() -> None:
    assert _imports_of("reference_mta.queue_contract") == {"reference_mta.mailmsg"}
    assert _imports_of("reference_mta.directory") == {"reference_mta.queue_contract"}
    assert _imports_of("reference_mta.topology") == set()


def test_the_lab_file_reader_is_read_by_the_lab_loader_only() -> None:
    assert _imported_by()["reference_mta.topology_reader"] == {"harness.lab.config"}


def test_the_directory_interface_is_not_reached_through_the_categorizer() -> None:
    importers = _imported_by()
    readers = importers["reference_mta.directory"]
    assert {"reference_mta.gateway", "reference_mta.address_book", "harness.lab.gc"} <= readers
    assert importers["reference_mta.categorizer"] == {"reference_mta.server"}

"""`mailflow generate`: write traces whose expected outcomes come from the oracle (harness/generation/oracle),
for scenarios sampled from the conformance catalogue's decision space (harness/generation/generator)."""

from __future__ import annotations

from pathlib import Path

import click

from harness.exit_codes import InputError
from harness.generation.generator import generate as generate_traces
from harness.lab import config as lab_config
from harness.yamlsource import SourceError

# The seed and size of the committed corpus in traces/generated: `mailflow generate` with no options
# regenerates it byte for byte.
DEFAULT_SEED = 20240601
DEFAULT_COUNT = 680


@click.command("generate", epilog="Exit codes: 0 written; 2 a wrong option, or a lab file that is not valid.")
@click.option("--lab", "lab_name", default="contoso", show_default=True, help="lab name or lab file")
@click.option(
    "--seed", type=int, default=DEFAULT_SEED, show_default=True, help="the same seed, the same files"
)
@click.option("--count", type=int, default=DEFAULT_COUNT, show_default=True, help="how many traces")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("traces/generated"),
    show_default=True,
    help="folder for the traces (its *.yaml files are replaced)",
)
def generate(lab_name: str, seed: int, count: int, output: Path) -> None:
    """Generate COUNT traces from SEED, their replies and outcomes predicted by the oracle."""
    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="--count")
    lab_file = lab_config.lab_path(lab_name)
    if not lab_file.is_file():
        raise click.BadParameter(lab_config.missing_lab(lab_name, lab_file), param_hint="--lab")
    try:
        written = generate_traces(lab_file, seed, count, output)
    except RuntimeError as exc:
        # The lab has fewer distinct scenarios than --count asks for.
        raise InputError(f"--count {count}: {exc}") from exc
    except SourceError as exc:
        raise InputError(str(exc)) from exc
    except OSError as exc:
        raise InputError(f"--output: cannot write {output}: {exc.strerror or exc}") from exc
    click.echo(f"{len(written)} traces written to {output} (lab {lab_file.stem}, seed {seed})")


if __name__ == "__main__":
    # Until the command is registered in the `mailflow` group: python -m harness.cli.generate
    generate()

"""The remedies a refusal carries (``GalleyError.hints``), as the command lines that apply
them: core says what may fix an error, the CLI says which flags do it."""

from __future__ import annotations

from rich.console import Console

from galley.core.errors import GalleyError, Hint, Remedy


def hint_line(hint: Hint, workflow: str | None) -> str:
    """A remedy an error carries, as the command line that applies it."""
    run = f"galley run {hint.workflow or workflow or 'WORKFLOW'}"
    if hint.remedy is Remedy.RESUME:
        return f"to continue it: {run} --resume {hint.run_id}"
    if hint.remedy is Remedy.ACCEPT_CHANGES:
        return (
            f"to train on with the new settings: {run} --resume {hint.run_id} ... --accept-changes"
        )
    if hint.remedy is Remedy.SET:
        return f"to give it: --set {hint.setting}={hint.value}"
    if hint.remedy is Remedy.FORCE:
        return "to do it anyway: add --force"
    return f"to make one: {run}"


def print_error(console: Console, error: GalleyError, workflow: str | None) -> None:
    console.print(f"error: {error}", style="red", soft_wrap=True)
    for hint in error.hints:
        console.print(f"  {hint_line(hint, workflow)}", soft_wrap=True)

"""Where weights come from: the one parse of a reference a setting holds (``init_from``, a
teacher, a registered ``base_model``), so no other code tells references apart by their
characters.

A reference is one of four forms, told apart by its text alone:

- ``registry:NAME``: a registered model (the checkpoint its entry names);
- ``scheme://...``: a checkpoint a service keeps (``tinker://``), not in the blob store;
- a path with ``/``: a blob key (a state checkpoint, an adapter export), or a model folder
  or Hub id, as the setting allows;
- a plain name: a run id (its newest good checkpoint), or a Hub id without an
  organisation, as the setting allows.

What a form means for a setting is its consumer's to say (``init_from`` takes no model, a
teacher does); what the form is, is said here."""

from __future__ import annotations

from enum import StrEnum

import attrs

from galley.core.errors import ValidationError
from galley.core.keys import check_name, has_scheme

REGISTRY_PREFIX = "registry:"


class SourceForm(StrEnum):
    REGISTERED = "registered"  # registry:NAME
    SERVICE = "service"  # scheme://...: kept by a service
    PATH = "path"  # a blob key, a model folder or a Hub id
    NAME = "name"  # a run id, or a Hub id without an organisation


@attrs.frozen
class WeightsSource:
    """A reference to weights, parsed: its text as given and its form."""

    text: str
    form: SourceForm

    @classmethod
    def parse(cls, text: str, field: str) -> WeightsSource:
        """``text``'s form; refused, naming ``field``, when it is none of them."""
        if not isinstance(text, str) or not text.strip():
            raise ValidationError(field, f"expected a reference to weights, got {text!r}")
        if text.startswith(REGISTRY_PREFIX):
            check_name(text.removeprefix(REGISTRY_PREFIX), field)
            return cls(text, SourceForm.REGISTERED)
        if has_scheme(text):
            return cls(text, SourceForm.SERVICE)
        if "/" in text:
            return cls(text, SourceForm.PATH)
        check_name(text, field)
        return cls(text, SourceForm.NAME)

    @property
    def registered_name(self) -> str:
        """The name of a ``registry:NAME`` reference."""
        if self.form is not SourceForm.REGISTERED:
            raise ValueError(f"{self.text!r} names no registered model")
        return self.text.removeprefix(REGISTRY_PREFIX)

    def __str__(self) -> str:
        return self.text


def optional_source(value: str | WeightsSource | None, field: str) -> WeightsSource | None:
    """A setting's reference, parsed where the setting is made (a config's converter): None
    stays None, a parsed one stays as it is."""
    if value is None or isinstance(value, WeightsSource):
        return value
    return WeightsSource.parse(value, field)

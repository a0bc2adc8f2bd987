"""The exceptions Persona Space raises on purpose.

Every message is written for a person: it says what was seen and what to do. The UI and the worker show these
messages as they are, so they never contain a traceback or a repr of a tensor.
"""

from __future__ import annotations


class PersonaSpaceError(Exception):
    """Base class of every error this package raises deliberately."""


class ModelLoadError(PersonaSpaceError):
    """A model spec could not be resolved or loaded."""


class ArchitectureError(PersonaSpaceError):
    """The decoder layers of a model could not be found."""


class InterventionError(PersonaSpaceError, ValueError):
    """An intervention (capture, monitor, cap, steer) was given values that do not fit the model."""


class SpaceError(PersonaSpaceError):
    """A persona space on disk is missing, corrupt, or built for another model."""


class SpaceMismatchError(SpaceError):
    """A persona space was built for a different model than the one loaded."""


class CatalogueError(PersonaSpaceError, ValueError):
    """The archetype catalogue, questions or prompts are malformed."""

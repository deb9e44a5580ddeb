"""scans: Safety-Conscious Activation Steering against exaggerated safety in chat LLMs."""

import gc as _gc

from .version import __version__

# Importing torch creates about 250,000 long-lived objects, and the cyclic garbage collector
# would walk them again and again meanwhile: paused for this import only.
_gc_was_enabled = _gc.isenabled()
_gc.disable()
try:
    from .api import Generation, Scans, Verdict
    from .errors import ScansError
    from .profile import Profile
    from .steering import SteeringPlan, SteeringVector, steer
finally:
    if _gc_was_enabled:
        _gc.enable()

__all__ = [
    "Generation",
    "Profile",
    "Scans",
    "ScansError",
    "SteeringPlan",
    "SteeringVector",
    "Verdict",
    "steer",
    "__version__",
]

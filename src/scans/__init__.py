"""scans: Safety-Conscious Activation Steering against exaggerated safety in chat LLMs."""

__version__ = "0.1.0"

from .api import Generation, Scans, Verdict  # noqa: E402
from .errors import ScansError  # noqa: E402
from .profile import Profile  # noqa: E402
from .steering import SteeringPlan, steer  # noqa: E402

__all__ = ["Generation", "Profile", "Scans", "ScansError", "SteeringPlan", "Verdict", "steer", "__version__"]

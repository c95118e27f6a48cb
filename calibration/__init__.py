"""Hardware profiles, cost curves, fitting, microbenchmarks and the measurement store."""

from calibration.errors import InputError
from calibration.profile import Curve, Link, Profile, load_profile, save_profile

__all__ = ["Curve", "InputError", "Link", "Profile", "load_profile", "save_profile"]

"""Deprecated: moved to :mod:`crbp_d2.rfpn.modeling`.

A package of its own (not an alias), so that ``crbp_d2.modeling.export`` below finds its own
deprecated alias rather than loading the head's modules a second time."""

from .._deprecated import warn_moved

warn_moved(__name__, "crbp_d2.rfpn.modeling")

from ..rfpn.modeling import *  # noqa: E402, F403
from ..rfpn.modeling import __all__  # noqa: E402, F401

"""Deprecated: moved to :mod:`crbp_d2.rfpn.lazy_config`."""

from ._deprecated import alias_module

alias_module(__name__, "crbp_d2.rfpn.lazy_config")

"""Deprecated: moved to :mod:`crbp_d2.rfpn.config` (write ``import crbp_d2.rfpn``)."""

from ._deprecated import alias_module

alias_module(__name__, "crbp_d2.rfpn.config")

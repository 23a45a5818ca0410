"""Helpers shared by the front-ends, the benchmarks and the tools (no Detectron2 import):
atomic writes (:mod:`.io`), result records -> JSON/Markdown/PNG and README blocks
(:mod:`.report`), machine descriptions (:mod:`.machine`), memory measurements and running a
configuration in its own process (:mod:`.bench`)."""

from .io import atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text, to_jsonable
from .machine import (
    cpu_description,
    cpu_model_name,
    device_description,
    grad_scaler,
    machine_record,
    parse_lscpu_model,
)
from .report import markdown_table, pyplot, update_readme_blocks, write_plot, write_results

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "cpu_description",
    "cpu_model_name",
    "device_description",
    "grad_scaler",
    "machine_record",
    "markdown_table",
    "parse_lscpu_model",
    "pyplot",
    "to_jsonable",
    "update_readme_blocks",
    "write_plot",
    "write_results",
]

"""The stages of a compile run, each a function over one run context.

    prepare -> plan_variants -> reference -> build -> verify -> measure -> serve -> select
        -> emit

``engine.compile`` calls them in this order; each takes and returns explicit data (the
context, the variants, the reference outputs) and is tested on its own.
"""

from lepton_compile.stages.build import Reference, build, reference
from lepton_compile.stages.context import Observer, RunContext
from lepton_compile.stages.emit import emit
from lepton_compile.stages.measure import measure, memory_groups
from lepton_compile.stages.prepare import plan_variants, prepare
from lepton_compile.stages.select import Selection, select
from lepton_compile.stages.serve import serve
from lepton_compile.stages.verify import verify

__all__ = [
    "Observer",
    "Reference",
    "RunContext",
    "Selection",
    "build",
    "emit",
    "measure",
    "memory_groups",
    "plan_variants",
    "prepare",
    "reference",
    "select",
    "serve",
    "verify",
]

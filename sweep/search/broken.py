"""Known-broken choices: a switch that cannot compile a study's graph costs one compile.

A dimension of the space may list the compile errors one of its non-default choices
causes (`Dimension.breaks` in conf/search/flags.yaml: a piece of iree-compile's message
-> the graph it breaks, in words). Such a choice is a suspect in each study until a
trial holding it answers:

- its compile fails with one of those messages: the choice is learned broken for the
  study (stored in the study, listed by `report --search`), and every later proposal
  holding it is told infeasible without a compile;
- it compiles (it ran, right or wrong): the choice is cleared for the study;
- it fails otherwise (another compile error, a timeout): the next trial holding it
  answers instead.

Why a suspect waits for one answer: the sampler asks `search.parallel` trials at once,
and its random start-up picks each switch half the time, so without the wait several
trials holding a broken switch compile before the first error arrives: most of a small
budget spent on one switch. `StudyRun` holds back a proposal holding a suspect choice while
another trial holding it is in flight, then skips or measures it once that one answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sweep.plan.config import Dimension
from workers.core.kinds import Status

Params = dict[str, str]
# the statuses of a row whose graphs compiled (it ran, right or wrong)
COMPILED = frozenset({Status.OK, Status.WRONG_OUTPUT, Status.RUNTIME_ERROR, Status.BENCH_TIMEOUT})


@dataclasses.dataclass
class KnownBreaks:
    """What one study knows of the choices that may break its graphs."""

    dimensions: tuple[tuple[str, Dimension], ...]
    # "dimension=choice" -> what broke: the choice, the graph, the signature, the point
    learned: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    compiled: set[str] = dataclasses.field(default_factory=set)  # suspects seen to compile

    def suspects(self, params: Params) -> list[str]:
        """The choices of `params` that a dimension says may break a compile."""
        return [
            f"{name}={params[name]}"
            for name, dim in self.dimensions
            if dim.breaks and params[name] != dim.default
        ]

    def untested(self, params: Params) -> list[str]:
        """Suspect choices of `params` this study has not yet seen compile or break."""
        return [c for c in self.suspects(params) if c not in self.compiled | self.learned.keys()]

    def broken_choice(self, params: Params) -> str | None:
        """The learned-broken choice (`dimension=choice`) the configuration holds, if any."""
        for label, info in self.learned.items():
            if params.get(info["dimension"]) == info["choice"]:
                return label
        return None

    def learn(self, params: Params, row: Mapping[str, Any]) -> bool:
        """What a trial's row says of its suspect choices; True when one is newly broken."""
        if row.get("status") in COMPILED:
            self.note_compiled(params)
            return False
        if row.get("status") != Status.COMPILE_ERROR:
            return False  # a timeout, a lost worker: no answer either way
        found = self._breaking(params, row.get("error_message") or "")
        if found is None:
            return False
        name, signature, graph = found
        label = f"{name}={params[name]}"
        if label in self.learned:
            return False
        self.learned[label] = {
            "dimension": name,
            "choice": params[name],
            "graph": graph,
            "signature": signature,
            "point_key": row["point_key"],
        }
        return True

    def note_compiled(self, params: Params) -> None:
        """A configuration compiled: none of its choices breaks this study's graphs."""
        self.compiled.update(self.suspects(params))

    def _breaking(self, params: Params, message: str) -> tuple[str, str, str] | None:
        """(dimension, signature, the graph it breaks) when a compile error's message is one
        a dimension says a non-default choice of `params` causes."""
        for name, dim in self.dimensions:
            if params[name] == dim.default:
                continue
            for signature, graph in dim.breaks.items():
                if signature in message:
                    return name, signature, graph
        return None
